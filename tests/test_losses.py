"""seqlab.losses against a float64 NumPy reference written element by element."""
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from seqlab import losses
from seqlab.tasks.base import Spec

B, T, K = 5, 6, 4


def make_spec(target, loss, num_outputs=K):
  metric = {'cross_entropy': 'accuracy', 'mse': 'mse', 'bernoulli': 'nll'}[loss]
  return Spec(input_vocab=0, input_features=3, target=target, num_outputs=num_outputs,
              loss=loss, metric=metric)


def make_data(rng, target, loss, masking, batch=B):
  """(outputs, batch dict, reference weights [batch(, time)] in float64)."""
  lead = (batch,) if target == 'sequence' else (batch, T)
  outputs = (3 * rng.standard_normal(lead + (K,))).astype(np.float32)
  if loss == 'cross_entropy':
    targets = rng.integers(0, K, size=lead).astype(np.int32)
  elif loss == 'bernoulli':
    targets = (rng.random(lead + (K,)) < 0.3).astype(np.float32)
  else:
    targets = rng.standard_normal(lead + (K,)).astype(np.float32)
  data = {'targets': targets}
  weights = np.ones(lead)
  if masking == 'lengths':
    lengths = rng.integers(0, T + 1, size=batch).astype(np.int32)
    lengths[0] = T  # at least one full row so something counts
    data['lengths'] = lengths
    weights = np.array([[1.0 if t < n else 0.0 for t in range(T)] for n in lengths])
  elif masking == 'target_mask':
    mask = (rng.random(lead) < 0.5).astype(np.float32)
    mask[0, 0] = 1.0
    data['target_mask'] = mask
    data['lengths'] = np.full(batch, 2, np.int32)  # target_mask takes precedence
    weights = mask.astype(np.float64)
  return outputs, data, weights


def reference(loss, outputs, targets, weights):
  """Weighted per-target means, one target at a time, in float64."""
  outputs = outputs.astype(np.float64).reshape(-1, K)
  weights = weights.reshape(-1)
  total = weights.sum()
  if loss == 'cross_entropy':
    targets = targets.reshape(-1)
    nll, correct = 0.0, 0.0
    for x, y, w in zip(outputs, targets, weights):
      m = max(x)
      log_z = m + math.log(sum(math.exp(v - m) for v in x))
      nll += w * (log_z - x[y])
      correct += w * float(int(np.argmax(x)) == y)
    ce = nll / total
    return {'loss': ce, 'count': total, 'cross_entropy': ce, 'accuracy': correct / total,
            'bpc': ce / math.log(2), 'perplexity': math.exp(ce)}
  targets = targets.astype(np.float64).reshape(-1, K)
  if loss == 'bernoulli':  # -log p(y) of each unit, from the sigmoid's definition
    prob = lambda x, y: 1 / (1 + math.exp(-x)) if y else 1 / (1 + math.exp(x))
    nll = sum(w * sum(-math.log(prob(o, t)) for o, t in zip(x, y))
              for x, y, w in zip(outputs, targets, weights))
    return {'loss': nll / total, 'count': total, 'nll': nll / total}
  sq = sum(w * sum((o - t) ** 2 for o, t in zip(x, y)) / K
           for x, y, w in zip(outputs, targets, weights))
  ab = sum(w * sum(abs(o - t) for o, t in zip(x, y)) / K
           for x, y, w in zip(outputs, targets, weights))
  return {'loss': sq / total, 'count': total, 'mse': sq / total, 'mae': ab / total}


CASES = [('sequence', 'cross_entropy', None), ('sequence', 'mse', None)] + [
    ('steps', loss, masking) for loss in ('cross_entropy', 'mse', 'bernoulli')
    for masking in (None, 'lengths', 'target_mask')]


@pytest.mark.parametrize('target,loss,masking', CASES)
@pytest.mark.parametrize('jit', [False, True])
def test_matches_numpy_reference(target, loss, masking, jit):
  rng = np.random.default_rng(0)
  outputs, data, weights = make_data(rng, target, loss, masking)
  spec = make_spec(target, loss)
  fn = functools.partial(losses.loss_and_metrics, spec)
  value, metrics = (jax.jit(fn) if jit else fn)(outputs, data)
  want = reference(loss, outputs, data['targets'], weights)
  assert set(metrics) == set(want)
  for key, w in want.items():
    assert metrics[key].dtype == jnp.float32 and metrics[key].shape == ()
    np.testing.assert_allclose(float(metrics[key]), w, rtol=2e-5, atol=1e-6, err_msg=key)
  assert float(value) == float(metrics['loss'])


def test_bfloat16_outputs_are_computed_in_float32():
  rng = np.random.default_rng(1)
  outputs, data, weights = make_data(rng, 'steps', 'cross_entropy', None)
  low = jnp.asarray(outputs, jnp.bfloat16)
  loss, _ = losses.loss_and_metrics(make_spec('steps', 'cross_entropy'), low, data)
  want = reference('cross_entropy', np.asarray(low.astype(jnp.float32)), data['targets'], weights)
  assert loss.dtype == jnp.float32
  np.testing.assert_allclose(float(loss), want['loss'], rtol=2e-5)


def test_nothing_counts_gives_zero_and_finite_gradient():
  spec = make_spec('steps', 'cross_entropy')
  outputs, data, _ = make_data(np.random.default_rng(2), 'steps', 'cross_entropy', None)
  data['target_mask'] = np.zeros((B, T), np.float32)
  grad, metrics = jax.grad(lambda o: losses.loss_and_metrics(spec, o, data), has_aux=True)(
      jnp.asarray(outputs))
  assert float(metrics['loss']) == 0.0 and float(metrics['count']) == 0.0
  assert np.all(np.isfinite(grad)) and not np.any(grad)


def test_gradient_matches_softmax_minus_onehot():
  spec = make_spec('steps', 'cross_entropy')
  outputs, data, weights = make_data(np.random.default_rng(3), 'steps', 'cross_entropy',
                                     'lengths')
  grad = jax.grad(lambda o: losses.loss_and_metrics(spec, o, data)[0])(jnp.asarray(outputs))
  x = outputs.astype(np.float64)
  p = np.exp(x - x.max(-1, keepdims=True))
  p /= p.sum(-1, keepdims=True)
  want = (p - np.eye(K)[data['targets']]) * weights[..., None] / weights.sum()
  np.testing.assert_allclose(np.asarray(grad), want, rtol=1e-4, atol=1e-7)


def test_bernoulli_gradient_is_sigmoid_minus_target_and_large_logits_stay_finite():
  spec = make_spec('steps', 'bernoulli')
  outputs, data, weights = make_data(np.random.default_rng(3), 'steps', 'bernoulli', 'lengths')
  outputs[0, 0] = [80.0, -80.0, 80.0, -80.0]  # exp(80) overflows float32
  data['targets'][0, 0] = [0.0, 1.0, 1.0, 0.0]
  grad, metrics = jax.grad(lambda o: losses.loss_and_metrics(spec, o, data), has_aux=True)(
      jnp.asarray(outputs))
  x = outputs.astype(np.float64)
  want = (1 / (1 + np.exp(-x)) - data['targets']) * weights[..., None] / weights.sum()
  np.testing.assert_allclose(np.asarray(grad), want, rtol=1e-4, atol=1e-7)
  assert np.isfinite(float(metrics['nll'])) and float(metrics['nll']) > 160 / weights.sum()


@pytest.mark.parametrize('target,loss,masking', [
    ('sequence', 'mse', None), ('sequence', 'cross_entropy', None),
    ('steps', 'cross_entropy', 'lengths'), ('steps', 'mse', 'target_mask')])
def test_aggregate_over_uneven_batches_equals_concatenated(target, loss, masking):
  rng = np.random.default_rng(4)
  spec = make_spec(target, loss)
  parts = [make_data(rng, target, loss, masking, batch=n) for n in (3, 7, 1)]
  per_batch = [jax.device_get(losses.loss_and_metrics(spec, o, d)[1]) for o, d, _ in parts]
  got = losses.aggregate(per_batch, [float(m['count']) for m in per_batch])
  outputs = np.concatenate([o for o, _, _ in parts])
  data = {k: np.concatenate([d[k] for _, d, _ in parts]) for k in parts[0][1]}
  _, whole = losses.loss_and_metrics(spec, outputs, data)
  assert set(got) == set(whole)
  for key in got:
    assert isinstance(got[key], float)
    np.testing.assert_allclose(got[key], float(whole[key]), rtol=2e-5, err_msg=key)


def test_aggregate_recomputes_bpc_and_perplexity():
  per_batch = [{'loss': 1.0, 'count': 1.0, 'cross_entropy': 1.0, 'accuracy': 0.0,
                'bpc': 1 / math.log(2), 'perplexity': math.e},
               {'loss': 3.0, 'count': 3.0, 'cross_entropy': 3.0, 'accuracy': 1.0,
                'bpc': 3 / math.log(2), 'perplexity': math.e ** 3}]
  got = losses.aggregate(per_batch, [1.0, 3.0])
  assert got['cross_entropy'] == pytest.approx(2.5)
  assert got['accuracy'] == pytest.approx(0.75)
  assert got['count'] == 4.0
  assert got['bpc'] == pytest.approx(2.5 / math.log(2))
  assert got['perplexity'] == pytest.approx(math.exp(2.5))  # not the mean of e and e^3


def test_aggregate_rejects_bad_weights():
  with pytest.raises(ValueError, match='one weight per batch'):
    losses.aggregate([{'mse': 1.0}], [1.0, 2.0])
  with pytest.raises(ValueError, match='positive sum'):
    losses.aggregate([{'mse': 1.0}], [0.0])


@pytest.mark.parametrize('target,loss,outputs_shape,targets_shape', [
    ('sequence', 'cross_entropy', (4, 3), (4,)),
    ('sequence', 'cross_entropy', (4, 6, 9), (4, 6)),
    ('steps', 'cross_entropy', (4, 9), (4,)),
    ('steps', 'cross_entropy', (4, 6, 9), (4, 5)),
    ('sequence', 'mse', (4, 9), (4, 1)),
    ('steps', 'mse', (4, 6, 3), (4, 6, 3)),
])
@pytest.mark.parametrize('jit', [False, True])
def test_wrong_shapes_raise_naming_both(target, loss, outputs_shape, targets_shape, jit):
  spec = make_spec(target, loss, num_outputs=9)
  dtype = np.int32 if loss == 'cross_entropy' else np.float32
  batch = {'targets': np.zeros(targets_shape, dtype)}
  fn = functools.partial(losses.loss_and_metrics, spec)
  with pytest.raises(ValueError, match=rf'{re_shape(outputs_shape)}.*{re_shape(targets_shape)}'):
    (jax.jit(fn) if jit else fn)(np.zeros(outputs_shape, np.float32), batch)


def re_shape(shape):
  return str(tuple(shape)).replace('(', r'\(').replace(')', r'\)')


def test_wrong_mask_shapes_and_float_class_targets_raise():
  spec = make_spec('steps', 'cross_entropy')
  outputs = np.zeros((B, T, K), np.float32)
  targets = np.zeros((B, T), np.int32)
  with pytest.raises(ValueError, match=r'target_mask of shape \(5, 5\).*\(5, 6\)'):
    losses.loss_and_metrics(spec, outputs, {'targets': targets,
                                            'target_mask': np.ones((B, T - 1), np.float32)})
  with pytest.raises(ValueError, match=r'lengths of shape \(4,\).*\(5,\)'):
    losses.loss_and_metrics(spec, outputs, {'targets': targets,
                                            'lengths': np.ones(B - 1, np.int32)})
  with pytest.raises(ValueError, match='integer class ids'):
    losses.loss_and_metrics(spec, outputs, {'targets': targets.astype(np.float32)})


def test_jit_does_not_recompile_for_new_values():
  spec = make_spec('steps', 'mse')
  fn = jax.jit(functools.partial(losses.loss_and_metrics, spec))
  rng = np.random.default_rng(5)
  for _ in range(3):
    outputs, data, _ = make_data(rng, 'steps', 'mse', 'lengths')
    fn(outputs, data)
  assert fn._cache_size() == 1  # pylint: disable=protected-access


# --- example_weight: padded eval batches ------------------------------------------------


@pytest.mark.parametrize('target,loss,masking', [
    ('sequence', 'cross_entropy', None), ('sequence', 'mse', None),
    ('steps', 'cross_entropy', 'lengths'), ('steps', 'mse', 'target_mask'),
    ('steps', 'mse', None)])
@pytest.mark.parametrize('jit', [False, True])
def test_example_weight_multiplies_each_sequences_weights(target, loss, masking, jit):
  rng = np.random.default_rng(6)
  outputs, data, weights = make_data(rng, target, loss, masking)
  example = np.array([1.0, 0.0, 2.0, 1.0, 0.5], np.float32)
  data['example_weight'] = example
  fn = functools.partial(losses.loss_and_metrics, make_spec(target, loss))
  _, metrics = (jax.jit(fn) if jit else fn)(outputs, data)
  lead = (1,) * (weights.ndim - 1)
  want = reference(loss, outputs, data['targets'], weights * example.reshape((B,) + lead))
  for key, w in want.items():
    np.testing.assert_allclose(float(metrics[key]), w, rtol=2e-5, atol=1e-6, err_msg=key)


@pytest.mark.parametrize('target,loss', [('sequence', 'cross_entropy'), ('sequence', 'mse'),
                                         ('steps', 'cross_entropy')])
def test_zero_weight_padding_rows_change_nothing(target, loss):
  """A batch padded with repeated rows of weight 0 scores as the unpadded batch."""
  rng = np.random.default_rng(7)
  spec = make_spec(target, loss)
  outputs, data, _ = make_data(rng, target, loss, None, batch=3)
  _, whole = losses.loss_and_metrics(spec, outputs, data)
  rows = np.array([0, 1, 2, 0, 1])
  padded = {k: v[rows] for k, v in data.items()}
  padded['example_weight'] = np.array([1, 1, 1, 0, 0], np.float32)
  _, got = losses.loss_and_metrics(spec, outputs[rows], padded)
  for key in whole:
    np.testing.assert_allclose(float(got[key]), float(whole[key]), rtol=1e-6, err_msg=key)
  assert float(got['count']) == float(whole['count'])


def test_wrong_example_weight_shape_raises():
  spec = make_spec('sequence', 'mse')
  with pytest.raises(ValueError, match=r'example_weight of shape \(4,\).*\(5,\)'):
    losses.loss_and_metrics(spec, np.zeros((B, K), np.float32),
                            {'targets': np.zeros((B, K), np.float32),
                             'example_weight': np.ones(B - 1, np.float32)})

"""The loss and eval metrics of every task, from its ``Spec``; and their aggregation.

``loss_and_metrics`` is pure and jittable (shapes are checked at trace time). Each
target (a sequence, or a step whose weight is 1) counts once:

  cross_entropy  CE = mean_i -log softmax(logits_i)[y_i]   (nats)
                 accuracy = mean_i [argmax logits_i == y_i]
                 bpc = CE / ln 2,  perplexity = exp(CE)
  mse            mse = mean_i mean_d (out_id - y_id)^2,  mae = mean_i mean_d |out_id - y_id|
  bernoulli      nll = mean_i sum_d -[y_id log s(out_id) + (1 - y_id) log(1 - s(out_id))]
                 (nats), s the sigmoid: independent binary units (the pitches of a
                 piano-roll frame), summed per target as in Boulanger-Lewandowski
                 et al. 2012, so 'nll' is the negative log-likelihood per time step.

For target='steps' the mean is weighted per step by ``target_mask`` if the batch has
one, else by ``t < lengths`` if it has ``lengths``, else uniformly. An optional
``example_weight`` [batch] multiplies the weights of each sequence's targets (for
'sequence' targets it is their weight): eval batches padded with repeated examples
give those weight 0. ``count`` is the sum of the weights, so ``aggregate`` can
combine batches exactly.
"""
import math

import jax
import jax.numpy as jnp
import numpy as np

from seqlab import seq2seq_metrics
from seqlab.tasks.base import LOSS_METRICS
from seqlab.tasks.base import METRIC_MODES
from seqlab.tasks.base import Spec


def check_shapes(spec: Spec, outputs_shape: tuple, targets_shape: tuple):
  """ValueError naming both shapes unless outputs and targets fit ``spec``.

  Expected outputs: [batch, num_outputs] ('sequence') or [batch, time, num_outputs]
  ('steps'); targets: outputs' shape without the last axis (cross_entropy) or equal
  to it (mse).
  """
  rank = 2 if spec.target == 'sequence' else 3
  class_axis = (spec.num_outputs,) if spec.loss == 'cross_entropy' else ()
  expected = tuple(targets_shape) + class_axis  # what outputs must be (mse, bernoulli: equal)
  if len(expected) != rank or expected[-1] != spec.num_outputs or (
      tuple(outputs_shape) != expected):
    want = '[batch, num_outputs]' if rank == 2 else '[batch, time, num_outputs]'
    raise ValueError(
        f'outputs of shape {tuple(outputs_shape)} do not fit targets of shape '
        f'{tuple(targets_shape)} for target={spec.target!r}, loss={spec.loss!r}, '
        f'num_outputs={spec.num_outputs}: outputs must be {want} and targets '
        f'{"the same without the last axis" if spec.loss == "cross_entropy" else "the same"}')


def target_weights(spec: Spec, batch: dict, shape: tuple) -> jax.Array:
  """Float32 weights of the targets: [batch] for 'sequence', [batch, time] for 'steps'.

  'sequence': ``example_weight`` if present, else ones. 'steps': ``target_mask``
  if present, else ``t < lengths`` if present, else ones; times ``example_weight``
  (one value per row) if present.
  """
  weights = _step_weights(spec, batch, shape)
  if 'example_weight' in batch:
    example = jnp.asarray(batch['example_weight'])
    _check_aux('example_weight', example.shape, shape[:1])
    example = example.astype(jnp.float32)
    weights = weights * (example if spec.target == 'sequence' else example[:, None])
  return weights


def _step_weights(spec: Spec, batch: dict, shape: tuple) -> jax.Array:
  """The weights before ``example_weight``: ones, ``target_mask`` or ``t < lengths``."""
  if spec.target == 'sequence':
    return jnp.ones(shape[:1], jnp.float32)
  if 'target_mask' in batch:
    mask = jnp.asarray(batch['target_mask'])
    _check_aux('target_mask', mask.shape, shape[:2])
    return mask.astype(jnp.float32)
  if 'lengths' in batch:
    lengths = jnp.asarray(batch['lengths'])
    _check_aux('lengths', lengths.shape, shape[:1])
    return (jnp.arange(shape[1])[None, :] < lengths[:, None]).astype(jnp.float32)
  return jnp.ones(shape[:2], jnp.float32)


def _check_aux(name, shape, expected):
  if tuple(shape) != tuple(expected):
    raise ValueError(f'{name} of shape {tuple(shape)} does not fit outputs: expected {expected}')


def weighted_mean(x: jax.Array, weights: jax.Array, count: jax.Array) -> jax.Array:
  """sum(w x) / count, 0 when nothing counts (with a finite gradient)."""
  return jnp.sum(weights * x) / jnp.where(count > 0, count, 1.0)


def loss_and_metrics(spec: Spec, outputs: jax.Array, batch: dict
                     ) -> tuple[jax.Array, dict[str, jax.Array]]:
  """The scalar loss and the metrics of one batch (float32 throughout).

  Args:
    spec: the task's ``Spec`` (static).
    outputs: logits (cross_entropy, bernoulli) or predictions (mse), [batch,
      num_outputs] for target='sequence', [batch, time, num_outputs] for 'steps'.
    batch: 'targets' (int [batch] / [batch, time] for cross_entropy, float
      [batch, num_outputs] / [batch, time, num_outputs] for mse and bernoulli), optional
      'target_mask' [batch, time], 'lengths' [batch] and 'example_weight' [batch].
  Returns:
    (loss, metrics): metrics has 'loss', 'count' and, for cross_entropy,
    'cross_entropy', 'accuracy', 'bpc', 'perplexity'; for mse, 'mse', 'mae'; for
    bernoulli, 'nll'.
    Class targets outside [0, num_outputs) give a NaN loss.
  """
  outputs = jnp.asarray(outputs).astype(jnp.float32)
  targets = jnp.asarray(batch['targets'])
  check_shapes(spec, outputs.shape, targets.shape)
  weights = target_weights(spec, batch, outputs.shape)
  count = jnp.sum(weights)
  if spec.loss == 'cross_entropy':
    if not jnp.issubdtype(targets.dtype, jnp.integer):
      raise ValueError(f'cross_entropy targets must be integer class ids, got {targets.dtype}')
    log_probs = jax.nn.log_softmax(outputs, axis=-1)
    nll = -jnp.take_along_axis(log_probs, targets[..., None], axis=-1)[..., 0]
    correct = (jnp.argmax(outputs, axis=-1) == targets).astype(jnp.float32)
    ce = weighted_mean(nll, weights, count)
    metrics = {'cross_entropy': ce, 'accuracy': weighted_mean(correct, weights, count),
               'bpc': ce / math.log(2), 'perplexity': jnp.exp(ce)}
  elif spec.loss == 'bernoulli':
    metrics = {'nll': weighted_mean(bernoulli_nll(outputs, targets), weights, count)}
  else:
    err = outputs - targets.astype(jnp.float32)
    mse = weighted_mean(jnp.mean(err * err, axis=-1), weights, count)
    metrics = {'mse': mse, 'mae': weighted_mean(jnp.mean(jnp.abs(err), axis=-1), weights, count)}
  loss = metrics['nll' if spec.loss == 'bernoulli' else spec.loss]
  return loss, {'loss': loss, 'count': count, **metrics}


def bernoulli_nll(logits: jax.Array, targets: jax.Array) -> jax.Array:
  """Summed Bernoulli NLL of binary ``targets`` under ``sigmoid(logits)``, both
  [..., d] -> [...]: sum_d softplus(x_d) - y_d x_d, which is -[y log s(x) + (1 - y)
  log(1 - s(x))] computed without forming s(x) (finite for any logit)."""
  return jnp.sum(jax.nn.softplus(logits) - targets.astype(jnp.float32) * logits, axis=-1)


def eval_metrics(spec: Spec) -> list[str]:
  """The eval metrics a run of a task with ``spec`` logs, besides 'count'."""
  names = [k for k in LOSS_METRICS[spec.loss] if k != 'count']
  if spec.decodes:
    names += list(seq2seq_metrics.METRIC_MODES)
  return names


def best_metric(spec: Spec, name: str = '') -> tuple[str, str]:
  """(metric, 'min' or 'max'): ``name`` (``train.best_metric``), or the task's own metric
  if empty, and which way it is better: what ranks the best checkpoint and a sweep's
  points. A ValueError listing the choices unless a run of ``spec`` logs it."""
  name = name or spec.metric
  choices = eval_metrics(spec)
  if name not in choices:
    raise ValueError(f'train.best_metric={name!r} is not an eval metric of this task; '
                     f'choose one of: {", ".join(choices)} (or \'\' for {spec.metric})')
  return name, METRIC_MODES[name]


def aggregate(metric_list: list[dict], weights: list[float]) -> dict[str, float]:
  """Dataset metrics from per-batch metrics: the mean weighted by ``weights``.

  With ``weights`` the batches' 'count's this equals the metric of the concatenated
  batches. 'count' is summed; 'bpc' and 'perplexity' are recomputed from the
  aggregated 'cross_entropy' (averaging them would be wrong: exp is not linear).
  """
  if len(metric_list) != len(weights) or not metric_list:
    raise ValueError(f'aggregate needs one weight per batch and at least one batch, got '
                     f'{len(metric_list)} batches and {len(weights)} weights')
  w = np.asarray(weights, np.float64)
  if np.any(w < 0) or w.sum() <= 0:
    raise ValueError(f'aggregate needs non-negative weights with a positive sum, got {weights}')
  if any(set(m) != set(metric_list[0]) for m in metric_list):
    raise ValueError('every batch must have the same metrics, got '
                     f'{[sorted(m) for m in metric_list]}')
  out = {}
  for key in metric_list[0]:
    values = np.array([float(m[key]) for m in metric_list], np.float64)
    out[key] = float(values.sum() if key == 'count' else np.dot(w, values) / w.sum())
  if 'cross_entropy' in out:
    out['bpc'] = out['cross_entropy'] / math.log(2)
    out['perplexity'] = math.exp(out['cross_entropy'])
  return out

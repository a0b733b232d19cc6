"""Sequence models: sampling from a language model, pooling, and the shapes of use."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from seqlab import layers
from seqlab import models
from seqlab.models import lm
from seqlab.models.sequence import SequenceModel


def _lm(cell='lstm', num_layers=2, vocab=11):
  encoder = layers.StackedRNN(cell=cell, hidden_size=16, num_layers=num_layers)
  model = SequenceModel(encoder=encoder, num_outputs=vocab, target='steps', vocab_size=vocab,
                        embed_dim=8)
  params = model.init(jax.random.key(0), jnp.zeros((1, 3), jnp.int32))
  return model, params


@pytest.mark.parametrize('cell,temperature,top_k', [('lstm', 1.0, 0), ('gru', 0.7, 3),
                                                    ('rnn', 0.0, 0)])
def test_sampling_is_deterministic_and_its_logits_equal_a_full_forward(cell, temperature, top_k):
  model, params = _lm(cell)
  prompt = jnp.array([[1, 4, 2], [3, 3, 0]], jnp.int32)
  key = jax.random.key(7)
  tokens, logits = lm.sample(model, params, prompt, key, 9, temperature, top_k)
  again, _ = lm.sample(model, params, prompt, key, 9, temperature, top_k)
  np.testing.assert_array_equal(tokens, again)
  assert tokens.shape == (2, 9) and logits.shape == (2, 9, 11)
  # Carrying the state forward gives the logits a forward pass over prompt + samples gives.
  full, _ = model.apply(params, jnp.concatenate([prompt, tokens[:, :-1]], axis=1))
  np.testing.assert_allclose(logits, full[:, prompt.shape[1] - 1:], rtol=1e-5, atol=1e-5)
  if temperature == 0.0:
    np.testing.assert_array_equal(tokens, jnp.argmax(logits, -1))
  if top_k:
    ranks = (logits > jnp.take_along_axis(logits, tokens[..., None], -1)).sum(-1)
    assert int(ranks.max()) < top_k  # every draw among the k most likely


def test_different_keys_draw_different_samples():
  model, params = _lm()
  prompt = jnp.ones((4, 2), jnp.int32)
  a, _ = lm.sample(model, params, prompt, jax.random.key(0), 20)
  b, _ = lm.sample(model, params, prompt, jax.random.key(1), 20)
  assert not np.array_equal(a, b)


def test_sampling_rejects_a_bidirectional_model_and_bad_prompts():
  model, params = _lm()
  with pytest.raises(ValueError, match='prompt must be int tokens'):
    lm.sample(model, params, jnp.ones((3,), jnp.int32), jax.random.key(0), 2)
  bi = SequenceModel(encoder=layers.StackedRNN(cell='gru', hidden_size=4, bidirectional=True),
                     num_outputs=5, target='steps', vocab_size=5, embed_dim=3)
  p = bi.init(jax.random.key(0), jnp.zeros((1, 2), jnp.int32))
  with pytest.raises(ValueError, match='unidirectional'):
    lm.sample(bi, p, jnp.ones((1, 2), jnp.int32), jax.random.key(0), 2)


@pytest.mark.parametrize('bidirectional', [False, True])
@pytest.mark.parametrize('pool', ['last', 'mean'])
def test_classifier_pools_valid_steps_only(bidirectional, pool):
  """Many-to-one: a padded row classifies like the same row alone, whatever the padding."""
  encoder = layers.StackedRNN(cell='gru', hidden_size=6, bidirectional=bidirectional)
  model = SequenceModel(encoder=encoder, num_outputs=3, pool=pool)
  xs = jax.random.normal(jax.random.key(1), (3, 7, 2))
  lengths = jnp.array([7, 4, 1])
  params = model.init(jax.random.key(0), xs, lengths)
  out, _ = model.apply(params, xs.at[1, 4:].set(99.0).at[2, 1:].set(-5.0), lengths)
  assert out.shape == (3, 3)
  for i, n in enumerate(lengths.tolist()):
    alone, _ = model.apply(params, xs[i:i + 1, :n], jnp.array([n]))
    np.testing.assert_allclose(out[i], alone[0], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize('bidirectional', [False, True])
@pytest.mark.parametrize('pool', ['last', 'mean'])
def test_residual_adds_the_input_at_valid_steps_only(bidirectional, pool):
  """With ``residual`` (input size = output size, so every layer adds its input) padded
  outputs stay zero, and a padded row classifies like the same row alone."""
  encoder = layers.StackedRNN(cell='gru', hidden_size=6, num_layers=2, residual=True,
                              bidirectional=bidirectional, merge='sum')
  model = SequenceModel(encoder=encoder, num_outputs=3, pool=pool)
  xs = jax.random.normal(jax.random.key(1), (3, 7, 6))
  lengths = jnp.array([7, 4, 1])
  params = model.init(jax.random.key(0), xs, lengths)
  padded = xs.at[1, 4:].set(99.0).at[2, 1:].set(-5.0)
  ys, _ = encoder.apply({'params': params['params']['encoder']}, padded, lengths)
  valid = jnp.arange(7)[None, :] < lengths[:, None]
  np.testing.assert_array_equal(jnp.where(valid[..., None], 0.0, ys), 0.0)
  ys_plain, _ = encoder.clone(residual=False).apply(
      {'params': params['params']['encoder']}, padded[:1], lengths[:1])
  assert not np.allclose(ys[:1], ys_plain)  # the residual is on
  out, _ = model.apply(params, padded, lengths)
  for i, n in enumerate(lengths.tolist()):
    alone, _ = model.apply(params, xs[i:i + 1, :n], jnp.array([n]))
    np.testing.assert_allclose(out[i], alone[0], rtol=1e-5, atol=1e-6)


def test_mean_pool_is_the_mean_of_valid_outputs():
  ys = jnp.arange(2 * 4 * 3, dtype=jnp.float32).reshape(2, 4, 3)
  valid = jnp.arange(4)[None, :] < jnp.array([[4], [2]])
  ys = jnp.where(valid[..., None], ys, 0.0)  # the scan's zero padding
  pooled = models.sequence.pool_outputs('mean', ys, jnp.array([4, 2]), None)
  np.testing.assert_allclose(pooled[1], ys[1, :2].mean(0))
  np.testing.assert_allclose(pooled[0], ys[0].mean(0))


def test_tagger_emits_one_output_per_step():
  encoder = layers.StackedRNN(cell='lstm', hidden_size=5, num_layers=2, bidirectional=True,
                              merge='sum')
  model = SequenceModel(encoder=encoder, num_outputs=4, target='steps')
  xs = jnp.ones((2, 6, 3))
  params = model.init(jax.random.key(0), xs)
  out, carries = model.apply(params, xs)
  assert out.shape == (2, 6, 4) and len(carries) == 2


def test_bad_choices_list_the_valid_ones():
  with pytest.raises(ValueError, match='last, mean, flatten'):
    SequenceModel(encoder=layers.StackedRNN(cell='gru', hidden_size=2), num_outputs=1,
                  pool='max')
  with pytest.raises(ValueError, match='concat'):
    layers.StackedRNN(cell='gru', hidden_size=2, bidirectional=True, merge='avg')



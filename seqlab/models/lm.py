"""Autoregressive sampling from a token language model.

The prompt is read once; each new token is then one step of the recurrence from
the carried state (no re-reading of the prefix), inside one ``lax.scan``.
"""
import jax
import jax.numpy as jnp


def sample_logits(key, logits, temperature: float = 1.0, top_k: int = 0):
  """Draws tokens from logits [batch, vocab]; temperature 0 is greedy (argmax).

  top_k > 0 keeps the k largest logits of each row before sampling; a k of at least
  vocab keeps every one, as 0 does.
  """
  if temperature == 0:
    return jnp.argmax(logits, axis=-1)
  logits = logits / temperature
  if 0 < top_k < logits.shape[-1]:
    kth = jax.lax.top_k(logits, top_k)[0][..., -1:]
    logits = jnp.where(logits < kth, -jnp.inf, logits)
  return jax.random.categorical(key, logits, axis=-1)


def sample(model, params, prompt, key, num_steps: int, temperature: float = 1.0, top_k: int = 0):
  """Continues ``prompt`` [batch, prompt_len] int tokens by ``num_steps`` tokens.

  ``model`` is a ``SequenceModel`` with token inputs and target='steps'. Returns
  ``(tokens [batch, num_steps], logits [batch, num_steps, vocab])`` where logits[:, i]
  is the distribution token i was drawn from. Deterministic for a fixed key.
  """
  if prompt.ndim != 2 or prompt.shape[1] < 1:
    raise ValueError(f'prompt must be int tokens [batch, length >= 1], got shape {tuple(prompt.shape)}')
  if model.encoder.bidirectional or model.target != 'steps' or model.vocab_size <= 0:
    raise ValueError('sampling needs a unidirectional token model with target=\'steps\'')
  logits, carry = model.apply(params, prompt)
  first = logits[:, -1]

  def step(state, key_t):
    carry, logits_t = state
    token = sample_logits(key_t, logits_t, temperature, top_k)
    new_logits, carry = model.apply(params, token[:, None], initial_carry=carry)
    return (carry, new_logits[:, 0]), (token, logits_t)

  keys = jax.random.split(key, num_steps)
  _, (tokens, logits) = jax.lax.scan(step, (carry, first), keys)
  return tokens.T, jnp.swapaxes(logits, 0, 1)


def sample_frames(model, params, prompt, key, num_steps: int, temperature: float = 1.0):
  """Continues ``prompt`` [batch, prompt_len, units] of binary frames by ``num_steps``
  frames, each unit drawn on independently with probability sigmoid(logit / temperature)
  (temperature 0: on where the logit is positive).

  ``model`` is a unidirectional ``SequenceModel`` with feature inputs, target='steps'
  and one sigmoid output per input unit (a piano roll's pitches). Returns ``(frames
  float32 [batch, num_steps, units], logits [batch, num_steps, units])``, logits[:, i]
  those frame i was drawn from. Deterministic for a fixed key.
  """
  if prompt.ndim != 3 or prompt.shape[1] < 1 or prompt.shape[2] != model.num_outputs:
    raise ValueError(f'prompt must be frames [batch, length >= 1, {model.num_outputs}], got '
                     f'shape {tuple(prompt.shape)}')
  if model.encoder.bidirectional or model.target != 'steps' or model.vocab_size > 0:
    raise ValueError("sampling frames needs a unidirectional feature model with target='steps'")
  logits, carry = model.apply(params, prompt)

  def step(state, key_t):
    carry, logits_t = state
    if temperature == 0:
      frame = (logits_t > 0).astype(jnp.float32)
    else:
      frame = jax.random.bernoulli(key_t, jax.nn.sigmoid(logits_t / temperature)).astype(
          jnp.float32)
    new_logits, carry = model.apply(params, frame[:, None], initial_carry=carry)
    return (carry, new_logits[:, 0]), (frame, logits_t)

  keys = jax.random.split(key, num_steps)
  _, (frames, logits) = jax.lax.scan(step, (carry, logits[:, -1]), keys)
  return jnp.swapaxes(frames, 0, 1), jnp.swapaxes(logits, 0, 1)

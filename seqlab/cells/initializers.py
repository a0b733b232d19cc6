"""Initialisers chosen by name.

Kernels of fused cells are ``[in, gates * hidden]``; each gate's ``[in, hidden]``
block is initialised on its own (an orthogonal recurrent kernel is orthogonal per
gate, as in Keras and Flax's ``OptimizedLSTMCell``).
"""
import jax
import jax.numpy as jnp

_BUILTIN = {
    'orthogonal': jax.nn.initializers.orthogonal(),
    'glorot_uniform': jax.nn.initializers.glorot_uniform(),
    'glorot_normal': jax.nn.initializers.glorot_normal(),
    'he_uniform': jax.nn.initializers.he_uniform(),
    'he_normal': jax.nn.initializers.he_normal(),
    'lecun_normal': jax.nn.initializers.lecun_normal(),
    'zeros': jax.nn.initializers.zeros,
}
NAMES = tuple(_BUILTIN) + ('uniform', 'identity')


def _uniform(key, shape, dtype=jnp.float32):
  """PyTorch's RNN default: U(-1/sqrt(hidden), 1/sqrt(hidden))."""
  bound = 1.0 / jnp.sqrt(shape[-1])
  return jax.random.uniform(key, shape, dtype, -bound, bound)


def _identity(key, shape, dtype=jnp.float32):
  """Identity recurrent kernel (IRNN, Le, Jaitly & Hinton 2015)."""
  del key
  if shape[0] != shape[1]:
    raise ValueError(f"'identity' needs a square kernel, got shape {shape}")
  return jnp.eye(shape[0], dtype=dtype)


def get(name: str):
  """Returns the initialiser ``(key, shape, dtype) -> array`` called ``name``."""
  if name == 'uniform':
    return _uniform
  if name == 'identity':
    return _identity
  if name not in _BUILTIN:
    raise ValueError(f'unknown initialiser {name!r}; choose one of: {", ".join(NAMES)}')
  return _BUILTIN[name]


def fused(name: str, key, fan_in: int, hidden: int, gates: int):
  """A ``[fan_in, gates * hidden]`` kernel made of ``gates`` blocks, each initialised alone."""
  init = get(name)
  keys = jax.random.split(key, gates)
  return jnp.concatenate([init(k, (fan_in, hidden), jnp.float32) for k in keys], axis=-1)

"""Vanilla (Elman) RNN: h_t = act(W_x x_t + W_h h_{t-1} + b).

``activation='relu'`` with ``recurrent_init='identity'`` is the IRNN of Le, Jaitly &
Hinton (2015), "A Simple Way to Initialize Recurrent Networks of Rectified Linear Units".
"""
import dataclasses

import jax
import jax.numpy as jnp

from seqlab.cells import base
from seqlab.cells import initializers

ACTIVATIONS = {'tanh': jnp.tanh, 'relu': jax.nn.relu}


@dataclasses.dataclass(frozen=True)
class SimpleRNN:
  """Elman RNN cell. Carry: h [..., hidden]."""
  hidden_size: int
  activation: str = 'tanh'
  kernel_init: str = 'glorot_uniform'
  recurrent_init: str = 'orthogonal'

  def __post_init__(self):
    if self.activation not in ACTIVATIONS:
      raise ValueError(f'unknown activation {self.activation!r}; choose one of: {", ".join(ACTIVATIONS)}')

  def init(self, key, input_size):
    k1, k2 = jax.random.split(key)
    h = self.hidden_size
    return {
        'kernel': initializers.get(self.kernel_init)(k1, (input_size, h), jnp.float32),
        'recurrent_kernel': initializers.get(self.recurrent_init)(k2, (h, h), jnp.float32),
        'bias': jnp.zeros((h,), jnp.float32),
    }

  def initial_carry(self, batch_shape):
    return base.zeros(batch_shape, self.hidden_size)

  project = staticmethod(base.dense_project)

  def recur(self, params, h, px_t):
    return base.gated_recur(self, params, h, px_t)

  combine = staticmethod(base.add)

  def gates(self, h, pre):
    """The activation of the preactivation [..., hidden]."""
    h = ACTIVATIONS[self.activation](pre)
    return h, h

  @staticmethod
  def output(carry):
    return carry

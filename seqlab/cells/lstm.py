"""LSTM (Hochreiter & Schmidhuber 1997) with the forget gate of Gers et al. (2000).

  [i, f, g, o] = x_t W + h_{t-1} U + b        (gate order as in PyTorch / cuDNN)
  c_t = sigmoid(f) * c_{t-1} + sigmoid(i) * tanh(g)
  h_t = sigmoid(o) * tanh(c_t)

The forget-gate bias starts at ``forget_bias`` (default 1.0, Gers et al.; Jozefowicz
et al. 2015) so that gradients flow through the cell state from the start.
"""
import dataclasses

import jax
import jax.numpy as jnp

from seqlab.cells import base
from seqlab.cells import initializers


@dataclasses.dataclass(frozen=True)
class LSTM:
  """LSTM cell. Carry: (c, h), each [..., hidden]; output h."""
  hidden_size: int
  forget_bias: float = 1.0
  kernel_init: str = 'glorot_uniform'
  recurrent_init: str = 'orthogonal'

  def init(self, key, input_size):
    k1, k2 = jax.random.split(key)
    h = self.hidden_size
    bias = jnp.zeros((4 * h,), jnp.float32).at[h:2 * h].set(self.forget_bias)
    return {
        'kernel': initializers.fused(self.kernel_init, k1, input_size, h, 4),
        'recurrent_kernel': initializers.fused(self.recurrent_init, k2, h, h, 4),
        'bias': bias,
    }

  def initial_carry(self, batch_shape):
    return (base.zeros(batch_shape, self.hidden_size),) * 2

  project = staticmethod(base.dense_project)

  def recur(self, params, carry, px_t):
    return base.gated_recur(self, params, carry, px_t)

  combine = staticmethod(base.add)

  @staticmethod
  def gates(carry, gates):
    """The gate arithmetic of one step from the preactivations [..., 4 * hidden]."""
    c, _ = carry
    i, f, g, o = jnp.split(gates, 4, axis=-1)
    c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
    h = jax.nn.sigmoid(o) * jnp.tanh(c)
    return (c, h), h

  @staticmethod
  def output(carry):
    return carry[1]

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
  def gates(carry, pre):
    """The gate arithmetic of one step from the preactivations [..., 4 * hidden]."""
    c, _ = carry
    i, f, g, o = LSTM.activations(pre)
    c = f * c + i * g
    h = o * jnp.tanh(c)
    return (c, h), h

  @staticmethod
  def activations(pre):
    """[i, f, g, o] preactivations [..., 4 * hidden] -> the four gates, [..., hidden] each."""
    i, f, g, o = jnp.split(pre, 4, axis=-1)
    return jax.nn.sigmoid(i), jax.nn.sigmoid(f), jnp.tanh(g), jax.nn.sigmoid(o)

  @staticmethod
  def gates_fwd(carry, pre):
    """``gates``, and what ``gates_bwd`` needs: pre and c_{t-1} (``seqlab.scan.fused``;
    recomputing the activations from them was measured faster on CPU than saving them)."""
    return LSTM.gates(carry, pre), (pre, carry[0])

  @staticmethod
  def gates_bwd(h, saved, dcarry, dy):
    """The VJP of ``gates`` from ``gates_fwd``'s saved values: (d carry, d pre)."""
    del h  # the gates read h only through h U
    pre, c = saved
    i, f, g, o = LSTM.activations(pre)
    tanh_c = jnp.tanh(f * c + i * g)
    dc, dh = dcarry
    dh = dh + dy
    dc = dc + dh * o * (1.0 - tanh_c * tanh_c)
    dpre = jnp.concatenate([dc * g * i * (1.0 - i), dc * c * f * (1.0 - f),
                            dc * i * (1.0 - g * g), dh * tanh_c * o * (1.0 - o)], axis=-1)
    return (dc * f, jnp.zeros_like(dh)), dpre

  @staticmethod
  def output(carry):
    return carry[1]

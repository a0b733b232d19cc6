"""GRU (Cho et al. 2014) in its two conventions.

  r = sigmoid(x W_r + h U_r + b_r)       reset gate
  z = sigmoid(x W_z + h U_z + b_z)       update gate
  reset_after=False (the paper):          n = tanh(x W_n + (r * h) U_n + b_n)
  reset_after=True  (cuDNN, PyTorch, Flax): r, z with + b_h{r,z} too, and
                                          n = tanh(x W_n + b_n + r * (h U_n + b_hn))
  h_t = (1 - z) * n + z * h_{t-1}

Gate order in the fused kernels is [r, z, n], as in PyTorch, so weights move across
by slicing. ``reset_after`` keeps a separate recurrent bias for all three gates
(PyTorch's ``b_hh`` = [b_hr, b_hz, b_hn]), added to ``h U`` before the reset gate.
"""
import dataclasses

import jax
import jax.numpy as jnp

from seqlab.cells import base
from seqlab.cells import initializers


@dataclasses.dataclass(frozen=True)
class GRU:
  """GRU cell. Carry: h [..., hidden]."""
  hidden_size: int
  reset_after: bool = True
  kernel_init: str = 'glorot_uniform'
  recurrent_init: str = 'orthogonal'

  def init(self, key, input_size):
    k1, k2 = jax.random.split(key)
    h = self.hidden_size
    params = {
        'kernel': initializers.fused(self.kernel_init, k1, input_size, h, 3),
        'recurrent_kernel': initializers.fused(self.recurrent_init, k2, h, h, 3),
        'bias': jnp.zeros((3 * h,), jnp.float32),
    }
    if self.reset_after:
      params['recurrent_bias'] = jnp.zeros((3 * h,), jnp.float32)
    return params

  def initial_carry(self, batch_shape):
    return base.zeros(batch_shape, self.hidden_size)

  project = staticmethod(base.dense_project)

  def recur(self, params, h, px_t):
    if self.reset_after:
      return base.gated_recur(self, params, h, px_t)
    hs = self.hidden_size
    px = px_t.astype(jnp.float32)
    u = params['recurrent_kernel']
    rz = base.matmul(h, u[:, :2 * hs], px_t.dtype)
    r = jax.nn.sigmoid(px[..., :hs] + rz[..., :hs])
    z = jax.nn.sigmoid(px[..., hs:2 * hs] + rz[..., hs:])
    n = jnp.tanh(px[..., 2 * hs:] + base.matmul(r * h, u[:, 2 * hs:], px_t.dtype))
    h = (1.0 - z) * n + z * h
    return h, h

  # reset_after only (``scan.fused``): ph = h U + b_h is ``base.recurrent``.

  @staticmethod
  def combine(px_t, ph):
    """The preactivations (px, ph), each [..., 3 * hidden], float32."""
    return px_t.astype(jnp.float32), ph

  def gates(self, h, pre):
    """The gate arithmetic of one step from ``combine``'s (px, ph)."""
    return self.gates_fwd(h, pre)[0]

  def gates_fwd(self, h, pre):
    """``gates``, and what ``gates_bwd`` needs besides h: [r, z, n] and the n part
    of ph, 4H per step instead of (px, ph)'s 6H (``seqlab.scan.fused``)."""
    (px_r, px_z, px_n), (ph_r, ph_z, ph_n) = (jnp.split(a, 3, axis=-1) for a in pre)
    r = jax.nn.sigmoid(px_r + ph_r)
    z = jax.nn.sigmoid(px_z + ph_z)
    n = jnp.tanh(px_n + r * ph_n)
    h = (1.0 - z) * n + z * h
    return (h, h), (jnp.concatenate([r, z, n], axis=-1), ph_n)

  def gates_bwd(self, h, res, dh, dy):
    """The VJP of ``gates`` at (h, ``gates_fwd``'s res): (d h, (d px, d ph))."""
    rzn, ph_n = res
    r, z, n = jnp.split(rzn, 3, axis=-1)
    d = dh + dy
    dn = d * (1.0 - z) * (1.0 - n * n)
    dz = d * (h - n) * z * (1.0 - z)
    dr = dn * ph_n * r * (1.0 - r)
    return d * z, (jnp.concatenate([dr, dz, dn], axis=-1), jnp.concatenate([dr, dz, dn * r], axis=-1))

  @staticmethod
  def output(carry):
    return carry

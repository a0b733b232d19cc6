"""minGRU and minLSTM (Feng et al. 2024, "Were RNNs All We Needed?").

Their gates read the input only, never h, so each is a diagonal linear recurrence
``h_t = a_t * h_{t-1} + b_t`` with (a_t, b_t) from x_t alone:

  minGRU:   z_t = sigmoid(x_t W_z + b_z),  h~_t = g(x_t W_h + b_h)
            h_t = (1 - z_t) * h_{t-1} + z_t * h~_t                 a = 1 - z,  b = z h~
  minLSTM:  f_t = sigmoid(x_t W_f + b_f),  i_t = sigmoid(x_t W_i + b_i),  h~_t = g(x_t W_h + b_h)
            f'_t = f_t / (f_t + i_t),  i'_t = i_t / (f_t + i_t)
            h_t = f'_t * h_{t-1} + i'_t * h~_t                      a = f',    b = i' h~

g(x) = x + 0.5 for x >= 0 and sigmoid(x) otherwise (continuous at 0) is the paper's
positive activation of its log-space version. Here the recurrence runs in linear space
(as in the paper's sequential algorithms) with g on h~ as in the log-space ones, so the
two agree; with a zero initial carry h stays positive. f' and i' are computed as
sigmoid(+-(log f - log i)) with log f = log_sigmoid(.), equal to f / (f + i) and
i / (f + i) but never 0 / 0, and 1 - z as sigmoid(-.), so neither loses digits.

Kernels are fused, gate order [z, h] and [f, i, h]; the output is h.
"""
import dataclasses

import jax
import jax.numpy as jnp

from seqlab.cells import base
from seqlab.cells import initializers


def g(x):
  """The paper's positive activation: x + 0.5 for x >= 0, sigmoid(x) below."""
  return jnp.where(x >= 0, x + 0.5, jax.nn.sigmoid(x))


def linear_step(cell, params, h, px_t):
  """One step ``h_t = a_t * h_{t-1} + b_t`` of a cell with ``coefficients``; y_t = h_t."""
  a, b = cell.coefficients(params, px_t)
  h = a * h + b
  return h, h


@dataclasses.dataclass(frozen=True)
class MinGRU:
  """minGRU cell. Carry: h [..., hidden]; output h. Kernel [in, 2 hidden]: [z | h~]."""
  hidden_size: int
  kernel_init: str = 'glorot_uniform'

  def init(self, key, input_size):
    h = self.hidden_size
    return {'kernel': initializers.fused(self.kernel_init, key, input_size, h, 2),
            'bias': jnp.zeros((2 * h,), jnp.float32)}

  def initial_carry(self, batch_shape):
    return base.zeros(batch_shape, self.hidden_size)

  project = staticmethod(base.dense_project)

  @staticmethod
  def coefficients(params, px):
    """[..., 2 hidden] -> (a, b), each [..., hidden] float32: a = 1 - z, b = z g(h~)."""
    pz, ph = jnp.split(px.astype(jnp.float32), 2, axis=-1)
    return jax.nn.sigmoid(-pz), jax.nn.sigmoid(pz) * g(ph)

  @staticmethod
  def readout(params, h, px):
    del params, px
    return h

  def recur(self, params, h, px_t):
    return linear_step(self, params, h, px_t)

  @staticmethod
  def output(carry):
    return carry


@dataclasses.dataclass(frozen=True)
class MinLSTM:
  """minLSTM cell. Carry: h [..., hidden]; output h. Kernel [in, 3 hidden]: [f | i | h~]."""
  hidden_size: int
  kernel_init: str = 'glorot_uniform'

  def init(self, key, input_size):
    h = self.hidden_size
    return {'kernel': initializers.fused(self.kernel_init, key, input_size, h, 3),
            'bias': jnp.zeros((3 * h,), jnp.float32)}

  def initial_carry(self, batch_shape):
    return base.zeros(batch_shape, self.hidden_size)

  project = staticmethod(base.dense_project)

  @staticmethod
  def coefficients(params, px):
    """[..., 3 hidden] -> (a, b), each [..., hidden] float32: a = f', b = i' g(h~)."""
    pf, pi, ph = jnp.split(px.astype(jnp.float32), 3, axis=-1)
    log_ratio = jax.nn.log_sigmoid(pf) - jax.nn.log_sigmoid(pi)  # log(f / i)
    return jax.nn.sigmoid(log_ratio), jax.nn.sigmoid(-log_ratio) * g(ph)

  @staticmethod
  def readout(params, h, px):
    del params, px
    return h

  def recur(self, params, h, px_t):
    return linear_step(self, params, h, px_t)

  @staticmethod
  def output(carry):
    return carry

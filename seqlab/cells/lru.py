"""Linear Recurrent Unit (Orvieto et al. 2023, "Resurrecting Recurrent Neural
Networks for Long Sequences").

  lambda = exp(-exp(nu_log) + i exp(theta_log))            [N] complex, |lambda| < 1
  gamma  = exp(gamma_log), at init sqrt(1 - |lambda|^2)    [N] input normalisation
  h_t = lambda * h_{t-1} + gamma * (x_t B)                 h [..., N] complex
  y_t = Re(h_t C) + x_t D                                  y [..., hidden] real

B = B_re + i B_im is [in, N] and C = C_re + i C_im is [N, hidden] (the paper's B, C
transposed, so ``x @ B``). The paper's layer maps H -> H with a diagonal skip D; a
seqlab cell maps ``in -> hidden`` (the first layer of a stack sees the features), so
D here is a dense [in, hidden] matrix, which holds the diagonal one as a special case.

The recurrence is diagonal and linear in h: ``coefficients`` gives
``a_t = lambda`` and ``b_t = gamma * (x_t B)`` for a whole sequence at once, so
``seqlab.scan`` can run it with an associative scan as well as step by step.

Ring initialisation (Sec. 3.3): |lambda| = r with r^2 ~ U[r_min^2, r_max^2] (uniform
on the ring's area) and phase ~ U[0, max_phase]. The paper's reference code draws from
the whole disk (r_min=0, r_max=1); its long-range experiments put the ring near the unit
circle, which is what a recurrent cell is for, so the defaults here are r_min=0.9,
r_max=0.999 and the paper's max_phase=6.28. Uniform draws are taken from [eps, 1) so no
parameter starts infinite (log 0).

The carry is h itself, complex64 [..., N] (single precision, as float32 carries are).
``output(carry)`` is [Re h, Im h], [..., 2N]: the output y_t needs x_t, which a carry
does not hold, so pooling the final carry reads the state rather than y. A gradient
with respect to the carry is complex too; its norm is sqrt(sum |g|^2).
"""
import dataclasses

import jax
import jax.numpy as jnp

from seqlab.cells import base


@dataclasses.dataclass(frozen=True)
class LRU:
  """LRU cell. Carry: h [..., N] complex64; outputs [..., hidden] float32.

  ``params['kernel']`` is [in, 2N + hidden], the blocks [B_re | B_im | D].
  """
  hidden_size: int
  state_size: int | None = None  # N; None means hidden_size
  r_min: float = 0.9
  r_max: float = 0.999
  max_phase: float = 6.28
  # Kept float32 under a bfloat16 compute dtype (``scan.cast_params``): they set lambda.
  float32_params = ('nu_log', 'theta_log', 'gamma_log')

  def __post_init__(self):
    if not 0.0 <= self.r_min < self.r_max <= 1.0:
      raise ValueError(f'need 0 <= r_min < r_max <= 1, got r_min={self.r_min}, r_max={self.r_max}')
    if self.max_phase <= 0:
      raise ValueError(f'max_phase must be positive, got {self.max_phase}')
    if self.state_size is not None and self.state_size <= 0:
      raise ValueError(f'state_size must be positive, got {self.state_size}')

  @property
  def n(self) -> int:
    return self.hidden_size if self.state_size is None else self.state_size

  def init(self, key, input_size):
    """Ring init of lambda; B ~ N(0, 1/(2 in)), C ~ N(0, 1/N), D ~ N(0, 1/in)."""
    k_r, k_phase, k_b, k_c, k_d = jax.random.split(key, 5)
    n, h = self.n, self.hidden_size
    eps = jnp.finfo(jnp.float32).eps
    r2 = jax.random.uniform(k_r, (n,), jnp.float32, eps, 1.0) * (self.r_max ** 2 - self.r_min ** 2) + self.r_min ** 2
    phase = self.max_phase * jax.random.uniform(k_phase, (n,), jnp.float32, eps, 1.0)
    b = jax.random.normal(k_b, (input_size, 2 * n), jnp.float32) / jnp.sqrt(2.0 * input_size)
    d = jax.random.normal(k_d, (input_size, h), jnp.float32) / jnp.sqrt(1.0 * input_size)
    c_re, c_im = jax.random.normal(k_c, (2, n, h), jnp.float32) / jnp.sqrt(1.0 * n)
    return {
        'kernel': jnp.concatenate([b, d], axis=-1),
        'nu_log': jnp.log(-0.5 * jnp.log(r2)),       # |lambda| = exp(-exp(nu_log)) = sqrt(r2)
        'theta_log': jnp.log(phase),
        'gamma_log': 0.5 * jnp.log1p(-r2),          # log sqrt(1 - |lambda|^2)
        'C_re': c_re,
        'C_im': c_im,
    }

  def initial_carry(self, batch_shape):
    return jnp.zeros(tuple(batch_shape) + (self.n,), jnp.complex64)

  @staticmethod
  def project(params, x):
    """``x @ [B_re | B_im | D]`` in the dtype of x: [..., in] -> [..., 2N + hidden]."""
    return x @ params['kernel'].astype(x.dtype)

  def coefficients(self, params, px):
    """[..., 2N + hidden] -> (a, b), each [..., N] complex64: a = lambda, b = gamma * x B."""
    n = self.n
    px = px.astype(jnp.float32)
    nu, theta, gamma = (jnp.exp(params[k].astype(jnp.float32)) for k in ('nu_log', 'theta_log', 'gamma_log'))
    shape = px.shape[:-1] + (n,)  # [..., N]: the [N] parameters broadcast explicitly
    lam = jnp.broadcast_to(jnp.exp(jax.lax.complex(-nu, theta)), shape)
    gamma = jnp.broadcast_to(gamma, shape)
    return lam, jax.lax.complex(gamma * px[..., :n], gamma * px[..., n:2 * n])

  def readout(self, params, h, px):
    """y = Re(h C) + x D: h [..., N], px [..., 2N + hidden] -> [..., hidden] float32."""
    re = base.matmul(jnp.real(h), params['C_re'], px.dtype)
    im = base.matmul(jnp.imag(h), params['C_im'], px.dtype)
    return re - im + px[..., 2 * self.n:].astype(jnp.float32)

  def recur(self, params, h, px_t):
    a, b = self.coefficients(params, px_t)
    h = a * h + b
    return h, self.readout(params, h, px_t)

  @staticmethod
  def output(carry):
    return jnp.concatenate([jnp.real(carry), jnp.imag(carry)], axis=-1)

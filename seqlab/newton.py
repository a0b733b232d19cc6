"""The Newton engine: a nonlinear recurrence solved over all timesteps at once.

A cell's step ``s_t = f_t(s_{t-1})`` (its carry packed into one vector s of D
entries: h for the RNN and GRU, (c, h) -- 2H -- for the LSTM; a padded step is the
identity) is a system of T equations in the whole trajectory s = (s_0 .. s_{T-1}).
Newton's method solves it (DEER: Lim et al. 2024, "Parallelizing non-linear sequential
models over the sequence length"): linearise every step around the current guess s^k,

  s^{k+1}_t = J_t s^{k+1}_{t-1} + (f_t(s^k_{t-1}) - J_t s^k_{t-1}),  J_t = df_t/ds at s^k_{t-1},

a *linear* recurrence in s^{k+1}, which ``jax.lax.associative_scan`` solves in O(log T)
depth (``linear_solve``). ``jacobian='dense'`` keeps all of J_t (DEER: O(T D^2) memory,
O(T D^3) work per iteration); ``'diagonal'`` only its diagonal (quasi-DEER, Gonzalez et
al. 2024, "Towards scalable and stable parallelization of nonlinear RNNs": O(T D), more
iterations). Both have the same fixed point, the sequential trajectory, and Newton on
this lower-triangular system is exact after at most T iterations.

Convergence is checked, not assumed (``trajectory``): iterate while max |s^{k+1} - s^k|
> tol and k < max_iters; a batch that does not converge (chaotic dynamics, where the
iterations grow with T: Gonzalez et al. 2025), or whose iterate stops being finite, is
recomputed by the sequential loop, so the result is the sequential trajectory within
tol either way. The iteration count and whether it fell back come out beside it.

Gradients (``states``'s custom VJP) are taken at the solution, not through the
iterations: with G_t the cotangent of s_t, the adjoint is the reverse linear recurrence

  lambda_t = G_t + J_{t+1}^T lambda_{t+1},   lambda_{T-1} = G_{T-1},

and then d params, d px_t = (df_t/d params, df_t/d px_t)^T lambda_t over all t at once
(one VJP of the step over the whole [time, batch]) and d s_{-1} = J_0^T lambda_0.
``adjoint='sequential'`` runs the reverse recurrence as a loop of one step's VJP each
(one matmul per step); ``'associative'`` builds every J_t^T (dense) and solves it with
the associative scan.
"""
import functools
import itertools
from typing import NamedTuple

import jax
import jax.numpy as jnp

from seqlab.cells import base

JACOBIANS = ('dense', 'diagonal')
ADJOINTS = ('sequential', 'associative')
GUESSES = ('zeros', 'carry')  # the first iterate: zeros, or the initial carry at every step
COLLECTION = 'newton'  # the Flax collection ``layers.RNN`` sows the solver's counts into


class Settings(NamedTuple):
  """One solve's static choices (``scan.ScanOptions``'s ``newton_*`` fields, checked there)."""
  jacobian: str = 'diagonal'
  tol: float = 1e-5
  max_iters: int = 32
  guess: str = 'zeros'
  adjoint: str = 'sequential'


def packing(carry):
  """(pack, unpack) between a carry pytree of [..., n_i] leaves and one [..., D] vector."""
  leaves, tree = jax.tree.flatten(carry)
  splits = list(itertools.accumulate(leaf.shape[-1] for leaf in leaves))[:-1]
  pack = lambda c: jnp.concatenate(jax.tree.leaves(c), axis=-1)
  unpack = lambda s: jax.tree.unflatten(tree, jnp.split(s, splits, axis=-1))
  return pack, unpack


def step_fn(cell, pack, unpack):
  """f(params, s [D], px [P], m []) -> s' [D]: one unbatched step on the packed carry;
  the identity where m is False (a padded step)."""
  def f(params, s, px, m):
    return jnp.where(m, pack(cell.recur(params, unpack(s), px)[0]), s)
  return f


def over_time(fn):
  """``fn`` of one example mapped over [time, batch] (params shared)."""
  return jax.vmap(jax.vmap(fn, (None, 0, 0, 0)), (None, 0, 0, 0))


def dense_jacobian(f):
  """(params, s, px, m) -> (f(s), J [D, D] = df/ds), by forward mode (D JVPs)."""
  return lambda params, s, px, m: jax.jacfwd(lambda s: (f(params, s, px, m),) * 2,
                                             has_aux=True)(s)[::-1]


def gated_diagonal(cell, f, pack, unpack):
  """(params, s, px, m) -> (f(s), diag(df/ds) [D]) for a cell made of ``combine`` and
  ``gates`` (``base.gated_recur``), in 1 + leaves + gates JVPs instead of D.

  Its gates act unit by unit, and h reaches another unit only through ph = h U:
  diag J = (d gates / d carry, ph held, each leaf's own entries)
         + sum_k (d gates / d ph_k) * U[i, k H + i] on h's entries.
  """
  def diag(params, s, px, m):
    carry = unpack(s)
    ph = base.recurrent(params, cell.output(carry), px.dtype)
    g = lambda c, ph: pack(cell.gates(c, cell.combine(px, ph))[0])
    leaves, tree = jax.tree.flatten(carry)
    direct = jnp.zeros_like(s)
    for i in range(len(leaves)):
      one = jax.tree.unflatten(tree, [(jnp.ones_like if j == i else jnp.zeros_like)(leaf)
                                      for j, leaf in enumerate(leaves)])
      direct = direct + pack(one) * jax.jvp(lambda c: g(c, ph), (carry,), (one,))[1]
    u = params['recurrent_kernel']
    hidden = u.shape[0]
    gates = u.shape[1] // hidden
    diag_u = jnp.diagonal(u.reshape(hidden, gates, hidden), axis1=0, axis2=2)  # [G, H]: U[i, kH+i]
    on_h = jax.linear_transpose(cell.output, carry)  # [H] -> the carry, zero but for h
    through = jnp.zeros_like(s)
    for k in range(gates):
      e = jnp.zeros((gates, hidden), ph.dtype).at[k].set(1.0).reshape(ph.shape)
      through = through + jax.jvp(lambda p: g(carry, p), (ph,), (e,))[1] * pack(on_h(diag_u[k])[0])
    return f(params, s, px, m), jnp.where(m, direct + through, 1.0)
  return diag


def jacobian_fn(cell, f, pack, unpack, form: str):
  """(params, s, px, m) -> (f(s), J): J [D, D] ('dense') or its diagonal [D] ('diagonal';
  by ``gated_diagonal`` where the cell allows it, else the dense one's diagonal)."""
  if form == 'dense':
    return dense_jacobian(f)
  if hasattr(cell, 'gates') and getattr(cell, 'reset_after', True):
    return gated_diagonal(cell, f, pack, unpack)
  dense = dense_jacobian(f)
  return lambda *args: (lambda v, j: (v, jnp.diagonal(j)))(*dense(*args))


def apply(a, x, dense: bool):
  """a x: a [..., D, D] (dense) or [..., D] (diagonal), x [..., D]."""
  if dense:
    return jnp.einsum('...ij,...j->...i', a, x, precision=jax.lax.Precision.HIGHEST)
  return a * x


def linear_solve(a, b, s0, dense: bool):
  """All s_t = a_t s_{t-1} + b_t, t = 0 .. T-1, from s_{-1} = s0, by an associative scan.

  a [T, B, D, D] or [T, B, D], b [T, B, D], s0 [B, D] -> s [T, B, D]. Two steps compose
  as (a1, b1) then (a2, b2) = (a2 a1, a2 b1 + b2); s0 is folded into b_0.
  """
  def compose(earlier, later):
    (a1, b1), (a2, b2) = earlier, later
    a = jnp.einsum('...ij,...jk->...ik', a2, a1, precision=jax.lax.Precision.HIGHEST) if dense else a2 * a1
    return a, apply(a2, b1, dense) + b2
  b = b.at[0].add(apply(a[0], s0, dense))
  return jax.lax.associative_scan(compose, (a, b))[1]


def shift(s0, s):
  """The incoming state of each step: [s0, s_0 .. s_{T-2}] ([T, B, D])."""
  return jnp.concatenate([s0[None], s[:-1]])


def sequential_states(f, params, px, s0, mask):
  """The sequential trajectory s [T, B, D] (the fallback), one step after another."""
  fb = jax.vmap(f, (None, 0, 0, 0))
  return jax.lax.scan(lambda s, inp: (fb(params, s, *inp),) * 2, s0, (px, mask))[1]


def trajectory(cell, settings: Settings, params, px, s0, mask, guess):
  """(s [T, B, D], iterations, fell back (0. or 1.)): Newton from ``guess`` until
  max |s^{k+1} - s^k| <= tol, else (at max_iters, or not finite) the sequential loop."""
  pack, unpack = packing(cell.initial_carry(()))
  f = step_fn(cell, pack, unpack)
  jac = over_time(jacobian_fn(cell, f, pack, unpack, settings.jacobian))
  dense = settings.jacobian == 'dense'

  def body(state):
    k, s, _ = state
    prev = shift(s0, s)
    value, a = jac(params, prev, px, mask)
    new = linear_solve(a, value - apply(a, prev, dense), s0, dense)
    return k + 1, new, jnp.max(jnp.abs(new - s))

  def cond(state):
    k, _, delta = state
    return (k < settings.max_iters) & (delta > settings.tol)  # a NaN delta stops too

  k, s, delta = jax.lax.while_loop(cond, body, (jnp.zeros((), jnp.int32), guess,
                                                jnp.array(jnp.inf, jnp.float32)))
  converged = delta <= settings.tol
  s = jax.lax.cond(converged, lambda: s, lambda: sequential_states(f, params, px, s0, mask))
  return s, k.astype(jnp.float32), 1.0 - converged.astype(jnp.float32)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def states(cell, settings: Settings, params, px, s0, mask, guess):
  """``trajectory`` with the adjoint of the module docstring as its VJP.

  px [T, B, P] (``cell.project``ed inputs), s0 [B, D], mask [T, B] bool, guess
  [T, B, D] -> (s [T, B, D], iterations, fell back).
  """
  return trajectory(cell, settings, params, px, s0, mask, guess)


def _states_fwd(cell, settings, params, px, s0, mask, guess):
  out = trajectory(cell, settings, params, px, s0, mask, guess)
  return out, (params, px, s0, mask, out[0])


def _states_bwd(cell, settings, residuals, cotangents):
  params, px, s0, mask, s = residuals
  ds = cotangents[0]
  pack, unpack = packing(cell.initial_carry(()))
  f = step_fn(cell, pack, unpack)
  prev = shift(s0, s)
  if settings.adjoint == 'associative':
    _, a = over_time(dense_jacobian(f))(params, prev, px, mask)
    at = jnp.swapaxes(a, -1, -2)  # J_t^T
    # Time reversed: mu_r = lambda_{T-1-r} = J_{T-r}^T mu_{r-1} + G_{T-1-r}, mu_{-1} = 0.
    back = jnp.concatenate([at[1:], jnp.zeros_like(at[:1])])[::-1]
    lam = linear_solve(back, ds[::-1], jnp.zeros_like(s0), True)[::-1]
    ds0 = apply(at[0], lam[0], True)
  else:
    fb = jax.vmap(f, (None, 0, 0, 0))

    def step(dnext, inputs):  # dnext = J_{t+1}^T lambda_{t+1}
      g_t, prev_t, px_t, m_t = inputs
      lam_t = g_t + dnext
      return jax.vjp(lambda v: fb(params, v, px_t, m_t), prev_t)[1](lam_t)[0], lam_t

    ds0, lam = jax.lax.scan(step, jnp.zeros_like(s0), (ds, prev, px, mask), reverse=True)
  _, vjp = jax.vjp(lambda p, x: over_time(f)(p, prev, x, mask), params, px)
  dparams, dpx = vjp(lam)
  return dparams, dpx, ds0, None, None


states.defvjp(_states_fwd, _states_bwd)


def run(cell, params, xs, carry, mask, settings: Settings):
  """The Newton engine of ``seqlab.scan.run``.

  xs [batch, time, features], carry (the cell's, [batch, ...] leaves), mask [time,
  batch] | None -> (final carry, ys [batch, time, hidden] zero at padded steps,
  {'newton_iterations', 'newton_fallbacks'} float32 scalars). The cells it runs output
  their carry's h (y_t = ``output(carry_t)``); a padded step keeps the carry, so the
  last state is each sequence's carry at its own last valid step.
  """
  px = cell.project(params, jnp.swapaxes(xs, 0, 1))  # [time, batch, proj]
  time, batch = px.shape[:2]
  mask = jnp.ones((time, batch), bool) if mask is None else mask
  pack, unpack = packing(carry)
  s0 = pack(carry)
  guess = jnp.broadcast_to(s0, (time,) + s0.shape)
  if settings.guess == 'zeros':
    guess = jnp.zeros_like(guess)
  s, iterations, fallbacks = states(cell, settings, params, px, s0, mask, guess)
  ys = jnp.where(mask[..., None], cell.output(unpack(s)), 0)
  stats = {'newton_iterations': iterations, 'newton_fallbacks': fallbacks}
  return unpack(s[-1]), jnp.swapaxes(ys, 0, 1), stats


def step_stats(sown) -> dict:
  """The training metrics from what ``layers.RNN`` sowed into ``COLLECTION`` in one
  step ({} if nothing ran the Newton engine): 'newton_iterations', the mean over its
  layers and directions, and 'newton_fallbacks', how many of them fell back."""
  found = {}
  for path, leaf in jax.tree_util.tree_leaves_with_path(sown.get(COLLECTION, {})):
    name = next(p.key for p in reversed(path) if isinstance(p, jax.tree_util.DictKey))
    found.setdefault(name, []).append(leaf)
  if not found:
    return {}
  return {'newton_iterations': jnp.mean(jnp.stack(found['newton_iterations'])),
          'newton_fallbacks': jnp.sum(jnp.stack(found['newton_fallbacks']))}

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

``damping`` lambda > 0 takes a Levenberg-Marquardt step instead (ELK, the same paper):
the x minimising sum_t |x_t - J_t x_{t-1} - b_t|^2 + lambda |x_t - s^k_t|^2, a Kalman
smoother's mean whose observations are the current guess. ``damping`` is the first
lambda; a step that lowers the residual sum_t |s_t - f_t(s_{t-1})|^2 is kept and lambda
shrinks, one that does not is refused and lambda grows (``DAMPING_*``); once it is
small the steps are Newton's again, so far from the solution the steps stay short and
near it they converge as Newton's do. Its normal equations are
block tridiagonal; ``damped_solve`` runs their Thomas elimination as three associative
scans (the forward sweep's pivots are a composition of Moebius maps, then two linear
recurrences), so depth stays O(log T). The fixed point is the same; a damped step is
shorter (more iterations near the solution) and does not overshoot on near-chaotic cells.

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
# The damped step's lambda after a step that lowered the residual (/ DECREASE) or did not
# (* INCREASE, and the step is refused): Levenberg-Marquardt's rule, capped at
# DAMPING_MAX; below DAMPING_SWITCH it is 0 (Newton's step).
DAMPING_DECREASE, DAMPING_INCREASE, DAMPING_SWITCH, DAMPING_MAX = 3.0, 2.0, 1e-4, 1e6
COLLECTION = 'newton'  # the Flax collection ``layers.RNN`` sows the solver's counts into


class Settings(NamedTuple):
  """One solve's static choices (``scan.ScanOptions``'s ``newton_*`` fields, checked there)."""
  jacobian: str = 'diagonal'
  tol: float = 1e-5
  max_iters: int = 32
  guess: str = 'zeros'
  adjoint: str = 'sequential'
  damping: float = 0.0  # 0: Newton (DEER); lambda > 0: the damped (ELK) step


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


def _ops(dense: bool):
  """(matmul, transpose, identity-like) on [..., D, D] blocks (dense) or on [..., D]
  diagonals (elementwise)."""
  if dense:
    mm = lambda x, y: jnp.einsum('...ij,...jk->...ik', x, y, precision=jax.lax.Precision.HIGHEST)
    return mm, lambda x: jnp.swapaxes(x, -1, -2), \
        lambda x: jnp.broadcast_to(jnp.eye(x.shape[-1], dtype=x.dtype), x.shape)
  return jnp.multiply, lambda x: x, jnp.ones_like


def damped_solve(a, b, s0, guess, damping: float, dense: bool):
  """argmin_x sum_t |x_t - a_t x_{t-1} - b_t|^2 + damping |x_t - guess_t|^2, x_{-1} = s0.

  a [T, B, D, D] or [T, B, D], b, guess [T, B, D], s0 [B, D] -> x [T, B, D]. The normal
  equations L_t x_{t-1} + M_t x_t + U_t x_{t+1} = r_t have L_t = -a_t (t > 0),
  M_t = (1 + damping) I + a_{t+1}^T a_{t+1}, U_t = L_{t+1}^T, r_t = b_t + damping guess_t
  - a_{t+1}^T b_{t+1} (a_T = b_T = 0; r_0 gains a_0 s0). Thomas elimination: pivots
  w_t = M_t - L_t c_{t-1}, c_t = w_t^{-1} U_t, y_t = w_t^{-1} (r_t - L_t y_{t-1}), then
  x_t = y_t - c_t x_{t+1}.

  Diagonal a: each unit is a scalar system, and the pivots' recurrence is a Moebius map,
  c_t = n_t / p_t with [n_t, p_t] = [0, 1] G_0 .. G_t, G_t = [[0, -L_t], [U_t, M_t]]:
  one associative scan of rescaled 2x2 products, then two linear recurrences by
  ``linear_solve`` -- O(log T) depth. Dense a: the block form of that product collapses
  to rank one in float32 within ~100 steps (the D rows align with its leading
  direction), so the forward sweep runs as a sequential scan (O(T) depth, O(T D^3)
  work), the back-substitution by ``linear_solve``.
  """
  mm, tr, eye = _ops(dense)
  lower = -a.at[0].set(jnp.zeros_like(a[0]))
  a_next = jnp.concatenate([a[1:], jnp.zeros_like(a[:1])])
  b_next = jnp.concatenate([b[1:], jnp.zeros_like(b[:1])])
  diag = (1.0 + damping) * eye(a) + mm(tr(a_next), a_next)
  upper = -tr(a_next)
  r = b + damping * guess - apply(tr(a_next), b_next, dense)
  r = r.at[0].add(apply(a[0], s0, dense))

  if dense:  # block Thomas, one step after another (see the docstring)
    def forward(prev, inputs):
      c_prev, y_prev = prev
      l_t, m_t, u_t, r_t = inputs
      w = m_t - mm(l_t, c_prev)
      c_t = jnp.linalg.solve(w, u_t)
      y_t = jnp.linalg.solve(w, (r_t - apply(l_t, y_prev, True))[..., None])[..., 0]
      return (c_t, y_t), (c_t, y_t)
    _, (c, y) = jax.lax.scan(forward, (jnp.zeros_like(diag[0]), jnp.zeros_like(s0)),
                             (lower, diag, upper, r))
  else:
    def product(earlier, later):
      p1, q1, r1, s1 = earlier
      p2, q2, r2, s2 = later
      out = (p1 * p2 + q1 * r2, p1 * q2 + q1 * s2, r1 * p2 + s1 * r2, r1 * q2 + s1 * s2)
      scale = functools.reduce(jnp.maximum, [jnp.abs(o) for o in out])
      return tuple(o / jnp.where(scale > 0, scale, 1.0) for o in out)

    _, _, n, p = jax.lax.associative_scan(
        product, (jnp.zeros_like(diag), -lower, upper, diag))
    c = n / p  # C_t = N_t / P_t
    w = diag - lower * jnp.concatenate([jnp.zeros_like(c[:1]), c[:-1]])
    y = linear_solve(-lower / w, r / w, jnp.zeros_like(s0), False)
  return linear_solve(-c[::-1], y[::-1], jnp.zeros_like(s0), dense)[::-1]


def shift(s0, s):
  """The incoming state of each step: [s0, s_0 .. s_{T-2}] ([T, B, D])."""
  return jnp.concatenate([s0[None], s[:-1]])


def sequential_states(f, params, px, s0, mask):
  """The sequential trajectory s [T, B, D] (the fallback), one step after another."""
  fb = jax.vmap(f, (None, 0, 0, 0))
  return jax.lax.scan(lambda s, inp: (fb(params, s, *inp),) * 2, s0, (px, mask))[1]


def trajectory(cell, settings: Settings, params, px, s0, mask, guess):
  """(s [T, B, D], iterations, fell back (0. or 1.)): Newton from ``guess`` until
  max |s^{k+1} - s^k| <= tol, else (at max_iters, or not finite) the sequential loop.
  Damped: only a Newton step (lambda down to 0) can end it."""
  pack, unpack = packing(cell.initial_carry(()))
  f = step_fn(cell, pack, unpack)
  jac = over_time(jacobian_fn(cell, f, pack, unpack, settings.jacobian))
  dense = settings.jacobian == 'dense'

  def body(state):
    k, s, _, lam = state
    prev = shift(s0, s)
    value, a = jac(params, prev, px, mask)
    offset = value - apply(a, prev, dense)
    if not settings.damping:
      new = linear_solve(a, offset, s0, dense)
      return k + 1, new, jnp.max(jnp.abs(new - s)), lam
    # Levenberg-Marquardt on the residual |s - f(s)|^2: a damped step that lowers it is
    # kept and lam shrinks, one that does not is refused and lam grows; below
    # DAMPING_SWITCH lam becomes 0 and the steps are Newton's (which converge precisely,
    # where the damped step's normal equations square the condition number), until a
    # Newton step raises the residual and damping resumes.
    new = jax.lax.cond(lam > 0, lambda: damped_solve(a, offset, s0, s, lam, dense),
                       lambda: linear_solve(a, offset, s0, dense))
    residual = lambda x, fx: jnp.sum(jnp.square(x - fx))
    step = jnp.max(jnp.abs(new - s))
    newton_step = lam == 0
    better = (residual(new, over_time(f)(params, shift(s0, new), px, mask))
              <= residual(s, value)) | (newton_step & (step <= settings.tol))
    lam = jnp.where(better, lam / DAMPING_DECREASE, jnp.maximum(lam, DAMPING_SWITCH)
                    * DAMPING_INCREASE)
    lam = jnp.where(lam < DAMPING_SWITCH, 0.0, jnp.minimum(lam, DAMPING_MAX))
    delta = jnp.where(better & newton_step, step, jnp.inf)  # converged: a Newton step
    return k + 1, jnp.where(better, new, s), delta, lam

  def cond(state):
    k, _, delta, _ = state
    return (k < settings.max_iters) & (delta > settings.tol)  # a NaN delta stops too

  k, s, delta, _ = jax.lax.while_loop(
      cond, body, (jnp.zeros((), jnp.int32), guess, jnp.array(jnp.inf, jnp.float32),
                   jnp.array(settings.damping, jnp.float32)))
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

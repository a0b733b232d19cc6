"""The one place that loops over time.

``run`` takes any cell (see ``seqlab.cells.base``) over a batch ``[batch, time,
features]`` with ``jax.lax.scan``. Padding is a mask, not a branch: past a sequence's
length its carry stays as it was and its outputs are zero, so the final carry is the
carry at the sequence's own last valid step (PyTorch's packed-sequence semantics).

Cells whose recurrence is diagonal and linear, ``h_t = a_t * h_{t-1} + b_t`` with
(a_t, b_t) from the input alone (LRU, minGRU, minLSTM), also provide
``coefficients(params, px) -> (a, b)`` and ``readout(params, h, px) -> y`` and keep h
as their carry; for them ``run`` has a second engine, ``jax.lax.associative_scan``
over time (Blelloch 1990; as in S5 and the LRU paper): O(log T) depth instead of T.

``remat=k`` bounds the memory of the backward pass, for either engine: time is cut
into chunks of k steps, an outer ``jax.lax.scan`` runs the chunks and each chunk runs
under ``jax.checkpoint`` (Chen et al. 2016, "Training Deep Nets with Sublinear Memory
Cost"). The backward pass keeps only the T/k carries between chunks and recomputes
one chunk's residuals at a time: O(T/k + k) memory for the recurrence instead of
O(T), for one more forward pass. k ~ sqrt(T) minimises it.

For cells built from ``combine`` and ``gates`` (LSTM, Elman RNN, the cuDNN-convention
GRU; ``seqlab.cells.base.gated_recur``) the sequential engine on CPU and GPU runs ``fused``: a
custom VJP whose backward loop holds one matmul per step and leaves every weight's
gradient to large matmuls after the loop, instead of adding outer products into dW and
dU at every step. On CPU it cuts time into spans (``chunk_spans``) so that one span's
weight matmuls overlap the next span's backward loop.
"""
import dataclasses
import enum
import functools
from typing import Any

import jax
import jax.numpy as jnp

from seqlab import newton
from seqlab.cells import base


class Engine(enum.Enum):
  """How ``run`` loops over time (``choose_engine`` resolves AUTO)."""
  SEQUENTIAL = 'sequential'  # jax.lax.scan, one step after another
  ASSOCIATIVE = 'associative'  # jax.lax.associative_scan; cells with coefficients() only
  NEWTON = 'newton'  # Newton over the whole trajectory (seqlab.newton); nonlinear cells
  AUTO = 'auto'  # picked per cell, width and backend, as measured


def choices(values) -> str:
  return ', '.join(str(v.value if isinstance(v, enum.Enum) else v) for v in values)

# On XLA:CPU 'auto' runs the associative engine only while one timestep is narrow:
# batch * state <= this many float32 words (a complex64 state counts twice). Measured
# on a 2-core CPU, jitted forward + backward of minGRU and LRU, T = 4 .. 4096: up to
# 256 words the associative scan was 1.2-4x faster (one 0.8x, at T = 4096), from 1024
# words on 1.1-4x slower, 512 mixed -- at nearly every length. The width of a step
# decides there, not the length: a sequential step is one cheap vector op, while the
# associative scan makes ~2 log T passes over [batch, time, N].
ASSOCIATIVE_MAX_WIDTH_CPU = 256


def fusable(cell) -> bool:
  """Whether ``fused`` can run ``cell``: one built from ``combine`` and ``gates`` (LSTM,
  Elman RNN, the cuDNN-convention GRU; not the paper-convention GRU, whose n gate
  multiplies (r * h) by U_n)."""
  return hasattr(cell, 'gates') and getattr(cell, 'reset_after', True)


def default_fuse(cell) -> bool:
  """Whether ``run`` uses ``fused`` by default: for ``fusable`` cells on CPU and GPU,
  where it was measured faster than autodiff of the plain scan at most shapes and
  even at the rest (BUILD_NOTES.md, "Fused backward on CPU and GPU"; on an H200
  1.4-1.7x at unroll 1 and 1.03-1.44x for LSTM and GRU at unroll 16, hoisted:
  records/2026-12-04_nvidia-h200.md); on TPUs it is not measured, so autodiff stays."""
  return fusable(cell) and jax.default_backend() in ('cpu', 'gpu')


def default_hoist() -> bool:
  """Whether to project every timestep's input in one matmul before the loop.

  It pays on GPUs (one large matmul instead of T small ones: measured 1.1-1.2x on
  an H200, fused or not; records/2026-12-04_nvidia-h200.md) and is assumed to on TPUs
  (not measured).
  On XLA:CPU it was measured not to, for every cell and batch size tried (two extra
  [time, batch, gates] buffers; BUILD_NOTES.md, "Hoisting off on the CPU, on
  elsewhere"), with ``fused`` or without.
  """
  return jax.default_backend() != 'cpu'


# lax.scan's unroll on GPUs: each loop iteration costs a round trip to the host to
# test the loop condition and a launch per kernel, so small and medium batches spend
# most of a step there. Measured on an H200 (training step, fused and hoisted, LSTM
# and GRU at 8x1024x256, 32x128x256, 64x512x1024): unroll 4 ran 1.2-1.8x and unroll
# 16 1.3-2.0x faster than 1 (best in 5 of 6; 0.95x of unroll 4 in the sixth), for
# up to 2.5 s more compile time. On XLA:CPU unrolling was measured slower (unroll 8
# halved throughput), so 1 stays there; TPUs are not measured.
UNROLL_GPU = 16


# Backends on which ``fused``'s backward loop writes each step's d(preactivations) over
# the saved preactivations instead of into a fresh zero-filled stack. On XLA:CPU it ran
# the LSTM 1.04-1.09x and the tanh RNN 1.21x faster, same gradients (BUILD_NOTES.md,
# "In-place backward on the CPU only"; records/2026-12-04_amd-epyc-2core.md).
# Not on GPUs: with the loop unrolled 16 (UNROLL_GPU) XLA:GPU copied the whole stack 14
# times per loop iteration, the LSTM ran 0.09-0.58x at three of four shapes (H200,
# records/2026-12-04_nvidia-h200.md, run 3).
IN_PLACE_BACKENDS = ('cpu',)

# Backends on which ``fused`` cuts time into spans of about CHUNK_STEPS_CPU steps (at
# most MAX_CHUNKS_CPU spans), each with its own forward and backward loop, so that a
# span's weight matmuls (dW, dU) can run while the backward loop of the span before it
# does: XLA:CPU's small per-step dots leave the second core mostly idle. On a 2-core
# CPU the training gradient ran 1.03-1.31x faster for LSTM, GRU and tanh RNN at
# 32x128x256, 128x64x512 and 8x1024x256 (spans of 16 to 128 steps all gained; 32
# steps, at most 8 spans, as much as any setting tried), and not at all on one core
# (BUILD_NOTES.md, "Time in spans on the CPU"; records/2026-12-04_intel-xeon-2core.md).
# On an H200 spans ran 0.98-0.99x of one span (records/2026-12-04_nvidia-h200.md, run 5),
# so one span there.
CHUNK_BACKENDS = ('cpu',)
CHUNK_STEPS_CPU = 32
MAX_CHUNKS_CPU = 8


def default_unroll() -> int:
  """``lax.scan``'s unroll when none is given: ``UNROLL_GPU`` on GPUs, else 1."""
  return UNROLL_GPU if jax.default_backend() == 'gpu' else 1


# The config's spelling of hoist and dtype (``ScanOptions.from_config``).
HOIST = {'auto': None, 'on': True, 'off': False}
DTYPES = {'float32': None, 'bfloat16': jnp.bfloat16}


# The ``model`` config keys that are ``ScanOptions`` fields of the same name.
NEWTON_KEYS = ('newton_jacobian', 'newton_tol', 'newton_max_iters', 'newton_guess',
               'newton_adjoint', 'newton_damping')


def _nonnegative_int(v) -> bool:
  return isinstance(v, int) and not isinstance(v, bool) and v >= 0


@dataclasses.dataclass(frozen=True)
class ScanOptions:
  """How ``run`` loops over time; the one list of its options (the fields).

  Fields (None: the measured per-backend default):
    hoist: project all timesteps' inputs in one matmul outside the loop (True) or
      inside it step by step (False); None: ``default_hoist()``. Sequential engine
      only (the associative one always projects the whole sequence).
    unroll: ``jax.lax.scan``'s unroll (sequential engine only), a positive int;
      None: ``default_unroll()`` (16 on GPUs, 1 elsewhere).
    dtype: compute dtype of the matmuls (e.g. jnp.bfloat16); None: float32.
      Carries stay float32.
    engine: an ``Engine`` (or its value, 'sequential', ...); AUTO: ``choose_engine``.
    remat: 0, or k > 0 to run chunks of k timesteps under ``jax.checkpoint``
      (``chunked``): the same results, O(T/k + k) instead of O(T) memory for the
      backward pass, about one more forward pass of compute.
    fuse: run a ``fusable`` cell through ``fused`` (sequential engine): True, False
      (autodiff of the plain scan), or None: ``default_fuse``.
    newton_jacobian, newton_tol, newton_max_iters, newton_guess, newton_adjoint,
      newton_damping: the
      Newton engine's ``newton.Settings`` (``seqlab.newton``): the Jacobian form
      ('dense': DEER, 'diagonal': quasi-DEER), the convergence tolerance on
      max |s^{k+1} - s^k|, the iterations before it falls back to the sequential loop,
      the first iterate ('zeros', or 'carry': the initial carry at every step), the
      backward pass ('sequential' or 'associative' adjoint) and the damping lambda of
      the ELK (Levenberg-Marquardt) step (0: plain Newton).

  Construction checks what does not depend on the cell; ``check(cell)`` the rest.
  """
  hoist: bool | None = None
  unroll: int | None = None
  dtype: Any = None
  engine: Engine = Engine.AUTO
  remat: int = 0
  fuse: bool | None = None
  newton_jacobian: str = newton.Settings().jacobian
  newton_tol: float = newton.Settings().tol
  newton_max_iters: int = newton.Settings().max_iters
  newton_guess: str = newton.Settings().guess
  newton_adjoint: str = newton.Settings().adjoint
  newton_damping: float = newton.Settings().damping

  def __post_init__(self):
    if not isinstance(self.engine, Engine):
      if self.engine not in {e.value for e in Engine}:
        raise ValueError(f'engine={self.engine!r} is not valid; choose one of: {choices(Engine)}')
      object.__setattr__(self, 'engine', Engine(self.engine))
    if self.unroll is not None and not (_nonnegative_int(self.unroll) and self.unroll > 0):
      raise ValueError(f'unroll must be a positive integer (steps per loop iteration) or '
                       f'None (0 in a config: default_unroll()), got {self.unroll!r}')
    if not _nonnegative_int(self.remat):
      raise ValueError(f'remat must be a non-negative integer (0 = off, k = steps per '
                       f'checkpointed chunk), got {self.remat!r}')
    for key, table in (('newton_jacobian', newton.JACOBIANS), ('newton_guess', newton.GUESSES),
                       ('newton_adjoint', newton.ADJOINTS)):
      if getattr(self, key) not in table:
        raise ValueError(f'{key}={getattr(self, key)!r} is not valid; choose one of: '
                         f'{choices(table)}')
    if not (isinstance(self.newton_tol, (int, float)) and self.newton_tol > 0):
      raise ValueError(f'newton_tol must be a positive number (the largest change of an '
                       f'iterate that counts as converged), got {self.newton_tol!r}')
    if not (isinstance(self.newton_damping, (int, float)) and not isinstance(
        self.newton_damping, bool) and self.newton_damping >= 0):
      raise ValueError(f'newton_damping must be a number >= 0 (0: Newton; lambda > 0: the '
                       f'damped ELK step), got {self.newton_damping!r}')
    if not (_nonnegative_int(self.newton_max_iters) and self.newton_max_iters > 0):
      raise ValueError(f'newton_max_iters must be a positive integer (Newton iterations '
                       f'before the sequential fallback), got {self.newton_max_iters!r}')

  def check(self, cell) -> None:
    """Raises a ValueError, naming the choices, when these options cannot run ``cell``."""
    if self.engine is Engine.ASSOCIATIVE and not hasattr(cell, 'coefficients'):
      others = [e for e in Engine if e is not Engine.ASSOCIATIVE]
      raise ValueError(f"engine='associative' needs a diagonal linear recurrence (a cell with "
                       f"coefficients(), e.g. lru, mingru, minlstm), not {type(cell).__name__}; "
                       f"choose one of: {', '.join(repr(e.value) for e in others)}")
    if self.engine is Engine.NEWTON and hasattr(cell, 'coefficients'):
      raise ValueError(f"engine='newton' solves a nonlinear recurrence; {type(cell).__name__} "
                       f"is linear in its carry: use engine='associative' (or 'auto')")
    if self.engine is Engine.NEWTON and self.remat:
      raise ValueError(f"engine='newton' keeps every step's state to solve for them all at "
                       f"once, so remat={self.remat} cannot bound its memory; set remat=0 or "
                       f"engine='sequential'")
    if self.fuse and not fusable(cell):
      raise ValueError(f'fuse=True needs a cell built from combine() and gates() (lstm, gru, '
                       f'rnn, irnn), not {type(cell).__name__}'
                       f'{" with reset_after=False" if hasattr(cell, "gates") else ""}; '
                       f'use fuse=None or False')

  def newton_settings(self) -> newton.Settings:
    """The Newton engine's options as ``newton.Settings``."""
    return newton.Settings(jacobian=self.newton_jacobian, tol=float(self.newton_tol),
                           max_iters=self.newton_max_iters, guess=self.newton_guess,
                           adjoint=self.newton_adjoint, damping=float(self.newton_damping))

  def fuse_for(self, cell) -> bool:
    """``fuse`` resolved for ``cell`` (None -> ``default_fuse``)."""
    return default_fuse(cell) if self.fuse is None else bool(self.fuse)

  @classmethod
  def from_config(cls, model) -> 'ScanOptions':
    """The ``model`` config section's ``hoist`` ('auto', 'on', 'off'), ``unroll`` (0:
    the default), ``dtype`` ('float32', 'bfloat16'), ``engine``, ``remat`` and the
    ``newton_*`` keys (the fields of the same names); a ValueError naming the
    ``model.`` key and its choices."""
    for key, table in (('hoist', HOIST), ('dtype', DTYPES)):
      if model[key] not in table:
        raise ValueError(f'model.{key}={model[key]!r} is not valid; choose one of: '
                         f'{choices(table)}')
    try:
      return cls(hoist=HOIST[model.hoist], unroll=model.unroll or None,
                 dtype=DTYPES[model.dtype], engine=model.engine, remat=model.remat,
                 **{k: model[k] for k in NEWTON_KEYS})
    except ValueError as e:
      raise ValueError(f'model.{e}') from None


def valid_mask(lengths, time: int):
  """[batch] lengths -> [time, batch] bool mask, True on valid steps."""
  return jnp.arange(time)[:, None] < lengths[None, :]


def reverse_valid(xs, lengths):
  """Reverses the valid prefix of each sequence of ``xs`` [batch, time, ...].

  Padding stays where it is, so reading the result forward reads each sequence
  backward from its own last valid step. Applying it twice is the identity.
  """
  time = xs.shape[1]
  t = jnp.arange(time)[None, :]
  n = lengths[:, None]
  idx = jnp.where(t < n, n - 1 - t, t)
  return jnp.take_along_axis(xs, idx.reshape(idx.shape + (1,) * (xs.ndim - 2)), axis=1)


def check_inputs(xs, lengths=None, input_size=None):
  """Raises a ValueError naming the problem when the shapes do not fit."""
  if xs.ndim != 3:
    raise ValueError(f'expected inputs of shape [batch, time, features], got shape {tuple(xs.shape)}')
  if input_size is not None and xs.shape[-1] != input_size:
    raise ValueError(f'inputs have {xs.shape[-1]} features but the layer was built for {input_size}')
  if lengths is not None and tuple(lengths.shape) != (xs.shape[0],):
    raise ValueError(f'lengths must have shape [batch] = ({xs.shape[0]},), got {tuple(lengths.shape)}')


def choose_engine(cell, engine: Engine, width: int) -> Engine:
  """SEQUENTIAL or ASSOCIATIVE for ``cell``, resolving AUTO.

  ``width`` is the float32 words of one timestep's state (batch * N, complex twice).
  'auto' is associative for cells with ``coefficients``: on CPU while ``width <=
  ASSOCIATIVE_MAX_WIDTH_CPU``, on accelerators always (not measured here; S5 and the
  LRU paper scan this way on GPU/TPU); classic cells are always sequential: 'auto'
  never picks NEWTON, which ran slower than the sequential engine at every measured
  shape on a 2-core CPU (GRU and LSTM, T = 1k..100k, hidden 4..256: 0.02-0.56x;
  records/2026-12-07_intel-xeon-2core.md, "The Newton engine") and is not measured on
  accelerators.
  """
  if engine is not Engine.AUTO:
    return engine
  if not hasattr(cell, 'coefficients'):
    return Engine.SEQUENTIAL
  narrow = width <= ASSOCIATIVE_MAX_WIDTH_CPU
  return Engine.ASSOCIATIVE if narrow or jax.default_backend() != 'cpu' else Engine.SEQUENTIAL


def state_width(carry) -> int:
  """Float32 words in a carry pytree (a complex64 element counts as two)."""
  return sum(leaf.size * leaf.dtype.itemsize // 4 for leaf in jax.tree.leaves(carry))


def run(cell, params, xs, *, lengths=None, initial_carry=None, reverse=False,
        options: ScanOptions | None = None, with_stats=False, **overrides):
  """Runs ``cell`` over ``xs`` [batch, time, features].

  Args:
    cell: a cell (``seqlab.cells``).
    params: the cell's parameters.
    xs: inputs [batch, time, features].
    lengths: optional [batch] int valid lengths; steps at and past a sequence's
      length leave its carry unchanged and output zeros.
    initial_carry: optional carry (pytree of [batch, hidden]); zeros by default.
      Pass a previous call's final carry to continue a stream (truncated BPTT).
    reverse: read each sequence backward from its last valid step; outputs are
      returned in the original time order.
    options: a ``ScanOptions`` (hoist, unroll, dtype, engine, remat, fuse); None:
      the defaults.
    with_stats: also return the engine's counts, a dict of float32 scalars:
      ``{'newton_iterations', 'newton_fallbacks'}`` from the Newton engine, {} from
      the others.
    **overrides: ``ScanOptions`` fields set on top of ``options``, e.g.
      ``engine='associative'``, ``remat=8``.

  Returns:
    ``(final_carry, ys)`` with ys [batch, time, hidden] in float32; with
    ``with_stats``, ``(final_carry, ys, stats)``.
  """
  options = dataclasses.replace(options or ScanOptions(), **overrides)
  options.check(cell)
  kernel = params.get('kernel') if isinstance(params, dict) else None
  check_inputs(xs, lengths, None if kernel is None else kernel.shape[0])
  batch, time, _ = xs.shape
  hoist = default_hoist() if options.hoist is None else options.hoist
  unroll = default_unroll() if options.unroll is None else options.unroll
  fuse = options.fuse_for(cell)
  if options.dtype is not None:
    params = cast_params(cell, params, options.dtype)
    xs = xs.astype(options.dtype)
  if reverse:
    xs = xs[:, ::-1] if lengths is None else reverse_valid(xs, lengths)
  carry = cell.initial_carry((batch,)) if initial_carry is None else initial_carry
  mask = None if lengths is None else valid_mask(lengths, time)

  engine, stats = choose_engine(cell, options.engine, state_width(carry)), {}
  if engine is Engine.NEWTON:
    carry, ys, stats = newton.run(cell, params, xs, carry, mask, options.newton_settings())
  else:
    if engine is Engine.ASSOCIATIVE:
      loop = lambda xs, carry, mask: associative(cell, params, xs, carry, mask)
    else:
      loop = lambda xs, carry, mask: sequential(cell, params, xs, carry, mask, hoist, unroll, fuse)
    remat = options.remat
    carry, ys = chunked(loop, xs, carry, mask, remat) if remat else loop(xs, carry, mask)
  if reverse:
    ys = ys[:, ::-1] if lengths is None else reverse_valid(ys, lengths)
  return (carry, ys, stats) if with_stats else (carry, ys)


def cast_params(cell, params, dtype):
  """``params`` in the compute ``dtype``, but for the entries named in the cell's
  ``float32_params`` (the LRU's eigenvalue parameters: rounding them to bfloat16
  moves lambda's phase by up to ~0.01 rad a step, an error that grows with time)."""
  keep = getattr(cell, 'float32_params', ())
  top = lambda path: getattr(path[0], 'key', None) if path else None
  return jax.tree_util.tree_map_with_path(
      lambda path, p: p if top(path) in keep else p.astype(dtype), params)


def masked_step(cell, params, carry, px_t, m_t):
  """``cell.recur``, then ``padded``."""
  return padded(m_t, carry, *cell.recur(params, carry, px_t))


def padded(m_t, carry, new, y_t):
  """(new, y_t) where ``m_t`` [batch] is True; the carry kept and y_t zeroed where False."""
  if m_t is None:
    return new, y_t
  new = jax.tree.map(lambda n, o: jnp.where(m_t[:, None], n, o), new, carry)
  return new, jnp.where(m_t[:, None], y_t, 0)


def sequential(cell, params, xs, carry, mask, hoist: bool, unroll: int, fuse: bool = False):
  """``cell.recur`` step by step with ``jax.lax.scan``.

  xs [batch, time, features], mask [time, batch] | None -> (carry, ys [batch, time, hidden]).
  """
  xs = jnp.swapaxes(xs, 0, 1)  # [time, batch, features]: each step reads a contiguous slab
  project = cell.project
  if hoist:
    xs, project = cell.project(params, xs), lambda params, px: px  # [time, batch, proj]
  if fuse:
    carry, ys = fused(cell, project, unroll, params, xs, carry, mask)
    return carry, jnp.swapaxes(ys, 0, 1)

  def step(carry, inputs):
    x_t, m_t = inputs
    return masked_step(cell, params, carry, project(params, x_t), m_t)

  carry, ys = jax.lax.scan(step, carry, (xs, mask), unroll=unroll)
  return carry, jnp.swapaxes(ys, 0, 1)  # [batch, time, hidden]


def gates_fwd(cell, carry, pre):
  """``(cell.gates(carry, pre), res)``: the step, and what ``gates_bwd`` needs besides the carry.

  A cell may choose (``cell.gates_fwd``: the GRU keeps its gate activations); by
  default ``res`` is ``pre`` and the backward recomputes the gates from it.
  """
  if hasattr(cell, 'gates_fwd'):
    return cell.gates_fwd(carry, pre)
  return cell.gates(carry, pre), pre


def gates_bwd(cell, carry, res, dcarry, dy):
  """(d carry, d pre): the VJP of ``cell.gates`` at the step that ``gates_fwd`` saved.

  ``cell.gates_bwd`` if the cell writes it by hand, else JAX's VJP of ``gates`` (with
  the default ``res``, ``pre``). d carry holds only what flows through the gate
  arithmetic; ``fused`` adds the path through h U.
  """
  if hasattr(cell, 'gates_bwd'):
    return cell.gates_bwd(carry, res, dcarry, dy)
  return jax.vjp(cell.gates, carry, res)[1]((dcarry, dy))


def chunk_spans(time: int) -> list[tuple[int, int]]:
  """[(start, stop)] of the time chunks ``fused`` runs as separate loops: on CPU about
  one per ``CHUNK_STEPS_CPU`` steps, at most ``MAX_CHUNKS_CPU``; one elsewhere."""
  k = 1
  if jax.default_backend() in CHUNK_BACKENDS:
    k = max(1, min(time // CHUNK_STEPS_CPU, MAX_CHUNKS_CPU))
  bounds = [j * time // k for j in range(k + 1)]
  return list(zip(bounds[:-1], bounds[1:]))


def _fused_forward(cell, project, unroll, params, xs, carry, mask, spans):
  """The plain scan over each span of time in turn, saving each step's incoming carry
  and ``gates_fwd``'s ``res``: (carry, ys), [(carries, res) per span]."""
  def step(carry, inputs):
    x_t, m_t = inputs
    pre = base.preactivations(cell, params, carry, project(params, x_t))
    out, res = gates_fwd(cell, carry, pre)
    new, y_t = padded(m_t, carry, *out)
    return new, (y_t, (carry, res))

  ys, saved = [], []
  for a, b in spans:
    carry, (ys_span, saved_span) = jax.lax.scan(
        step, carry, (xs[a:b], None if mask is None else mask[a:b]), unroll=unroll)
    ys.append(ys_span)
    saved.append(saved_span)
  return (carry, ys[0] if len(ys) == 1 else jnp.concatenate(ys)), saved


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1, 2))
def fused(cell, project, unroll, params, xs, carry, mask):
  """The scan of a ``fusable`` cell, with a backward pass that leaves every weight out of the loop.

  project(params, x_t) -> px_t (``cell.project``, or the identity on pre-projected
  inputs), xs [time, batch, features], mask [time, batch] | None -> (carry,
  ys [time, batch, hidden]).

  The forward loop saves each step's incoming carry and ``gates_fwd``'s residuals
  (the preactivations, or what the cell chooses). The backward loop applies
  ``gates_bwd`` (JAX's VJP of ``gates``, recomputing it, or the cell's own) and
  carries the carry's gradient: one matmul per step, dh = dph U^T, against a copy of
  U^T made once. Each step's d(preactivations) go into a stack carried through the
  loop; on CPU that stack is the saved preactivations themselves, overwritten in
  place as they are read (when the residuals are the preactivations). Every other
  gradient comes after the loop, from the stacked preactivation gradients, as the
  VJPs of ``project`` and ``base.recurrent`` over all [time * batch] rows at once (of
  a span, below):
  dW = X^T dPX, dU = H_prev^T dPH, dX = dPX W^T (dropped by XLA when nothing needs
  it). Autodiff of the plain scan instead runs three to four matmuls per backward
  step, two of them rank-``batch`` updates of all of dW and dU, and stores more per
  step. On CPU time is cut into spans (``chunk_spans``), each with its own loops and
  stacks, so that a span's weight matmuls run while the backward loop of the span
  before it does. Measured: BUILD_NOTES.md, "Fused backward on CPU and GPU" and "Time
  in spans on the CPU".
  """
  return _fused_forward(cell, project, unroll, params, xs, carry, mask, [(0, xs.shape[0])])[0]


def _fused_fwd(cell, project, unroll, params, xs, carry, mask):
  spans = chunk_spans(xs.shape[0])
  out, saved = _fused_forward(cell, project, unroll, params, xs, carry, mask, spans)
  return out, (params, xs, mask, saved)


def _fused_bwd(cell, project, unroll, residuals, cotangents):
  params, xs, mask, saved = residuals
  dcarry, dys = cotangents
  dtype = xs.dtype
  step_struct = lambda a: jax.ShapeDtypeStruct(a.shape[1:], a.dtype)  # one timestep of a stack
  carry_t = jax.tree.map(step_struct, saved[0][0])
  px_t = jax.eval_shape(project, params, step_struct(xs))
  ph_t = jax.eval_shape(lambda c: base.recurrent(params, cell.output(c), dtype), carry_t)

  def combine_t(dpre, rows):
    """(dpx, dph) [rows, ...] from d(preactivations): ``combine`` is linear."""
    like = lambda a: jax.ShapeDtypeStruct((rows,) + a.shape[1:], a.dtype)
    return jax.linear_transpose(cell.combine, like(px_t), like(ph_t))(dpre)

  output_t = jax.linear_transpose(cell.output, carry_t)  # dh -> d(carry)
  u_t = params['recurrent_kernel'].T.astype(dtype)  # one transposed copy: [proj, hidden]
  pre_leaves, pre_tree = jax.tree.flatten(jax.eval_shape(cell.combine, px_t, ph_t))
  rows = lambda a: a.reshape((-1,) + a.shape[2:])  # [time, batch, ...] -> [time * batch, ...]

  def span_loop(dcarry, carries, res, dys, mask):
    """The backward loop over one span: (d carry before it, [d pre stacks])."""
    # On IN_PLACE_BACKENDS each step's d(preactivations) overwrite the saved residuals
    # that step has just read, when they have the same shapes (the default res = pre;
    # not the GRU's): no second [time, batch, proj] stack to zero-fill (BUILD_NOTES.md,
    # "In-place backward on the CPU only"); a partial overwrite (the GRU's d px over its
    # saved gates) made XLA copy the whole stack every step.
    time = dys.shape[0]
    res_leaves, res_tree = jax.tree.flatten(res)
    overwrite = (jax.default_backend() in IN_PLACE_BACKENDS and res_tree == pre_tree
                 and all(r.shape[1:] == p.shape and r.dtype == p.dtype
                         for r, p in zip(res_leaves, pre_leaves)))
    dpres = res_leaves if overwrite else [jnp.zeros((time,) + p.shape, p.dtype) for p in pre_leaves]

    def step(i, state):
      dnew, dpres = state
      t = time - 1 - i  # backward in time
      carry, dy = jax.tree.map(lambda a: a[t], carries), dys[t]
      res_t = jax.tree.unflatten(res_tree, [a[t] for a in (dpres if overwrite else res_leaves)])
      if mask is not None:
        m_t = mask[t]
        dnext = dnew
        dnew = jax.tree.map(lambda d: jnp.where(m_t[:, None], d, 0), dnew)
        dy = jnp.where(m_t[:, None], dy, 0)
      dcarry, dpre = gates_bwd(cell, carry, res_t, dnew, dy)
      dh = base.matmul(combine_t(dpre, dy.shape[0])[1], u_t, dtype)
      dcarry = jax.tree.map(jnp.add, dcarry, output_t(dh)[0])
      if mask is not None:  # a padded step passed the carry through
        dcarry = jax.tree.map(lambda d, n: jnp.where(m_t[:, None], d, n), dcarry, dnext)
      dpres = [jax.lax.dynamic_update_index_in_dim(s, d, t, 0)
               for s, d in zip(dpres, jax.tree.leaves(dpre))]
      return dcarry, dpres

    return jax.lax.fori_loop(0, time, step, (dcarry, dpres), unroll=unroll)

  def span_weights(dpres, xs, carries):
    """(d params, d xs) of one span from its stacked d(preactivations): the VJPs of
    ``project`` and ``base.recurrent`` over all of the span's rows at once."""
    dpres = jax.tree.unflatten(pre_tree, dpres)
    dpx, dph = combine_t(jax.tree.map(rows, dpres), xs.shape[0] * xs.shape[1])
    dparams, dxs = jax.vjp(project, params, rows(xs))[1](dpx)
    h_prev = rows(cell.output(carries))
    (drecurrent,) = jax.vjp(lambda p: base.recurrent(p, h_prev, dtype), params)[1](dph)
    return jax.tree.map(jnp.add, dparams, drecurrent), dxs.reshape(xs.shape)

  # Spans last to first, as the forward saved them: each span's weight matmuls depend
  # on its own loop only, so XLA may run them beside the next span's loop (on CPU that
  # loop leaves a core idle).
  lengths = [jax.tree.leaves(carries)[0].shape[0] for carries, _ in saved]
  dparams, dxs = None, [None] * len(saved)
  for j in reversed(range(len(saved))):
    a = sum(lengths[:j])
    b = a + lengths[j]
    carries, res = saved[j]
    dcarry, dpres = span_loop(dcarry, carries, res, dys[a:b], None if mask is None else mask[a:b])
    dparams_span, dxs[j] = span_weights(dpres, xs[a:b], carries)
    dparams = dparams_span if dparams is None else jax.tree.map(jnp.add, dparams, dparams_span)
  return dparams, dxs[0] if len(dxs) == 1 else jnp.concatenate(dxs), dcarry, None


fused.defvjp(_fused_fwd, _fused_bwd)


def chunked(loop, xs, carry, mask, k: int):
  """``loop`` over chunks of ``k`` timesteps, each chunk under ``jax.checkpoint``.

  loop(xs [batch, k, features], carry, mask [k, batch] | None) -> (carry, ys [batch,
  k, hidden]) is one engine; xs [batch, time, features], mask [time, batch] | None ->
  (carry, ys [batch, time, hidden]). Time is padded to a multiple of k with masked
  steps, which leave the carry as it was; their outputs are cut off.
  """
  batch, time, features = xs.shape
  k = min(k, time)
  n = -(-time // k)  # chunks
  pad = n * k - time
  if pad:
    mask = jnp.ones((time, batch), bool) if mask is None else mask
    mask = jnp.pad(mask, ((0, pad), (0, 0)))  # [n * k, batch], False on padding
    xs = jnp.pad(xs, ((0, 0), (0, pad), (0, 0)))
  xs = jnp.swapaxes(xs.reshape(batch, n, k, features), 0, 1)  # [n, batch, k, features]
  mask = None if mask is None else mask.reshape(n, k, batch)

  @jax.checkpoint
  def chunk(carry, inputs):
    xs_c, mask_c = inputs
    return loop(xs_c, carry, mask_c)

  carry, ys = jax.lax.scan(chunk, carry, (xs, mask))  # ys [n, batch, k, hidden]
  ys = jnp.swapaxes(ys, 0, 1).reshape(batch, n * k, ys.shape[-1])
  return carry, ys[:, :time]


def combine(earlier, later):
  """Composes two steps of ``h -> a * h + b``: first ``earlier``, then ``later``.

  (a1, b1) then (a2, b2) is h -> a2 (a1 h + b1) + b2 = (a1 a2) h + (a2 b1 + b2);
  associative, so ``jax.lax.associative_scan`` may bracket the steps as it likes.
  """
  a1, b1 = earlier
  a2, b2 = later
  return a1 * a2, a2 * b1 + b2


def linear_recurrence(a, b, h0):
  """All h_t = a_t * h_{t-1} + b_t, t = 0 .. T-1, from h_{-1} = h0.

  a, b [batch, time, N], h0 [batch, N] -> h [batch, time, N]. h0 is folded into the
  first step (b_0 + a_0 h0), after which h_t is the b-part of the prefix composition.
  """
  b = b.at[:, 0].add(a[:, 0] * h0)
  return jax.lax.associative_scan(combine, (a, b), axis=1)[1]


def associative(cell, params, xs, h0, mask):
  """A cell with ``coefficients`` over all timesteps at once; its carry is h.

  xs [batch, time, features], h0 [batch, N], mask [time, batch] | None ->
  (h at each sequence's last valid step [batch, N], ys [batch, time, hidden]).
  Padded steps are the identity step (a = 1, b = 0), so h keeps its last valid value.
  """
  px = cell.project(params, xs)  # [batch, time, proj]
  a, b = cell.coefficients(params, px)  # [batch, time, N] each
  if mask is not None:
    m = mask.T[:, :, None]  # [batch, time, 1]
    a, b = jnp.where(m, a, 1), jnp.where(m, b, 0)
  hs = linear_recurrence(a, b, h0)
  ys = cell.readout(params, hs, px)
  if mask is not None:
    ys = jnp.where(m, ys, 0)
  return hs[:, -1], ys

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
"""
import jax
import jax.numpy as jnp

ENGINES = ('sequential', 'associative', 'auto')

# On XLA:CPU 'auto' runs the associative engine only while one timestep is narrow:
# batch * state <= this many float32 words (a complex64 state counts twice). Measured
# on a 2-core CPU, jitted forward + backward of minGRU and LRU, T = 4 .. 4096: up to
# 256 words the associative scan was 1.2-4x faster (one 0.8x, at T = 4096), from 1024
# words on 1.1-4x slower, 512 mixed -- at nearly every length. The width of a step
# decides there, not the length: a sequential step is one cheap vector op, while the
# associative scan makes ~2 log T passes over [batch, time, N].
ASSOCIATIVE_MAX_WIDTH_CPU = 256


def default_hoist() -> bool:
  """Whether to project every timestep's input in one matmul before the loop.

  It pays on GPUs and TPUs (one large matmul instead of T small ones); on XLA:CPU it
  was measured not to (two extra [time, batch, gates] buffers; see BUILD_NOTES.md).
  """
  return jax.default_backend() != 'cpu'


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


def check_engine(cell, engine: str) -> None:
  """Raises a ValueError, listing the choices, when ``engine`` cannot run ``cell``."""
  if engine not in ENGINES:
    raise ValueError(f'engine={engine!r} is not valid; choose one of: {", ".join(ENGINES)}')
  if engine == 'associative' and not hasattr(cell, 'coefficients'):
    raise ValueError(f"engine='associative' needs a diagonal linear recurrence (a cell with "
                     f"coefficients(), e.g. lru, mingru, minlstm), not {type(cell).__name__}; "
                     f"choose one of: 'sequential', 'auto'")


def choose_engine(cell, engine: str, width: int) -> str:
  """'sequential' or 'associative' for ``cell``, resolving 'auto'.

  ``width`` is the float32 words of one timestep's state (batch * N, complex twice).
  'auto' is associative for cells with ``coefficients``: on CPU while ``width <=
  ASSOCIATIVE_MAX_WIDTH_CPU``, on accelerators always (not measured here; S5 and the
  LRU paper scan this way on GPU/TPU); classic cells are always sequential.
  """
  check_engine(cell, engine)
  if engine != 'auto':
    return engine
  if not hasattr(cell, 'coefficients'):
    return 'sequential'
  narrow = width <= ASSOCIATIVE_MAX_WIDTH_CPU
  return 'associative' if narrow or jax.default_backend() != 'cpu' else 'sequential'


def state_width(carry) -> int:
  """Float32 words in a carry pytree (a complex64 element counts as two)."""
  return sum(leaf.size * leaf.dtype.itemsize // 4 for leaf in jax.tree.leaves(carry))


def run(cell, params, xs, *, lengths=None, initial_carry=None, reverse=False,
        hoist=None, unroll=1, dtype=None, engine='auto'):
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
    hoist: project all timesteps' inputs in one matmul outside the loop (True) or
      inside it step by step (False); None picks ``default_hoist()``. Sequential
      engine only (the associative one always projects the whole sequence).
    unroll: passed to ``jax.lax.scan`` (sequential engine only).
    dtype: compute dtype of the matmuls (e.g. jnp.bfloat16); carries stay float32.
    engine: one of ``ENGINES``: 'sequential' (``jax.lax.scan``), 'associative'
      (``jax.lax.associative_scan``, cells with ``coefficients`` only) or 'auto'
      (see ``choose_engine``).

  Returns:
    ``(final_carry, ys)`` with ys [batch, time, hidden] in float32.
  """
  kernel = params.get('kernel') if isinstance(params, dict) else None
  check_inputs(xs, lengths, None if kernel is None else kernel.shape[0])
  batch, time, _ = xs.shape
  hoist = default_hoist() if hoist is None else hoist
  if dtype is not None:
    params = jax.tree.map(lambda p: p.astype(dtype), params)
    xs = xs.astype(dtype)
  if reverse:
    xs = xs[:, ::-1] if lengths is None else reverse_valid(xs, lengths)
  carry = cell.initial_carry((batch,)) if initial_carry is None else initial_carry
  mask = None if lengths is None else valid_mask(lengths, time)

  if choose_engine(cell, engine, state_width(carry)) == 'associative':
    carry, ys = associative(cell, params, xs, carry, mask)
  else:
    carry, ys = sequential(cell, params, xs, carry, mask, hoist, unroll)
  if reverse:
    ys = ys[:, ::-1] if lengths is None else reverse_valid(ys, lengths)
  return carry, ys


def sequential(cell, params, xs, carry, mask, hoist: bool, unroll: int):
  """``cell.recur`` step by step with ``jax.lax.scan``.

  xs [batch, time, features], mask [time, batch] | None -> (carry, ys [batch, time, hidden]).
  """
  xs = jnp.swapaxes(xs, 0, 1)  # [time, batch, features]: each step reads a contiguous slab
  if hoist:
    xs = cell.project(params, xs)  # [time, batch, proj]

  def step(carry, inputs):
    x_t, m_t = inputs
    px_t = x_t if hoist else cell.project(params, x_t)
    new, y_t = cell.recur(params, carry, px_t)
    if m_t is not None:
      new = jax.tree.map(lambda n, o: jnp.where(m_t[:, None], n, o), new, carry)
      y_t = jnp.where(m_t[:, None], y_t, 0)
    return new, y_t

  carry, ys = jax.lax.scan(step, carry, (xs, mask), unroll=unroll)
  return carry, jnp.swapaxes(ys, 0, 1)  # [batch, time, hidden]


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

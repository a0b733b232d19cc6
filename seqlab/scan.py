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

For cells whose recurrence only adds ``h_{t-1} U`` to the projected input (LSTM, Elman
RNN), a hoisted sequential scan on CPU computes dU after the backward loop as one
matmul (``deferred``) instead of adding an outer product into dU at every step.
"""
import functools

import jax
import jax.numpy as jnp

from seqlab import cells

ENGINES = ('sequential', 'associative', 'auto')

# On XLA:CPU 'auto' runs the associative engine only while one timestep is narrow:
# batch * state <= this many float32 words (a complex64 state counts twice). Measured
# on a 2-core CPU, jitted forward + backward of minGRU and LRU, T = 4 .. 4096: up to
# 256 words the associative scan was 1.2-4x faster (one 0.8x, at T = 4096), from 1024
# words on 1.1-4x slower, 512 mixed -- at nearly every length. The width of a step
# decides there, not the length: a sequential step is one cheap vector op, while the
# associative scan makes ~2 log T passes over [batch, time, N].
ASSOCIATIVE_MAX_WIDTH_CPU = 256


# Cells whose ``recur`` reads its recurrent parameters only in ``ph = output(carry) @
# params['recurrent_kernel'] (+ params['recurrent_bias'])``, so that dU = sum_t
# h_{t-1}^T dph_t (see ``deferred``). For LSTM and Elman RNN, ph adds to px_t and
# dph = dpx; the cuDNN-convention GRU gives dph from dpx and its reset gate
# (``recurrent_cotangent``).
DEFERRED_CELLS = (cells.LSTM, cells.SimpleRNN, cells.GRU)


def deferrable(cell) -> bool:
  """Whether ``deferred`` can run ``cell`` (the paper-convention GRU cannot: its n gate
  multiplies (r * h) by U_n)."""
  return isinstance(cell, DEFERRED_CELLS) and getattr(cell, 'reset_after', True)


# On XLA:CPU the hoisted scan with the deferred kernel gradient beat projecting inside
# the loop up to this batch size. Measured on a 2-core CPU, jitted training step, hidden
# 256/512, T 128-1024: LSTM 2.1x at batch 4, 1.55-1.7x at 8, 1.2x at 16, 0.89x at 32,
# 0.79x at 64; Elman RNN 3.0x, 1.9x, 1.2x, 1.2x, 1.03x; GRU 1.23x at 8, 1.02x at 16,
# 1.07x at 32, 0.66x at 128 (notes in BUILD_NOTES.md).
DEFERRED_MAX_BATCH_CPU = 16


def default_hoist(cell=None, batch: int | None = None) -> bool:
  """Whether to project every timestep's input in one matmul before the loop.

  It pays on GPUs and TPUs (one large matmul instead of T small ones). On XLA:CPU it
  was measured not to (two extra [time, batch, gates] buffers; see BUILD_NOTES.md),
  except for ``DEFERRED_CELLS`` at batch <= ``DEFERRED_MAX_BATCH_CPU``, where the
  hoisted scan's deferred kernel gradient wins.
  """
  if jax.default_backend() != 'cpu':
    return True
  return deferrable(cell) and batch is not None and batch <= DEFERRED_MAX_BATCH_CPU


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


def check_remat(remat) -> None:
  """Raises a ValueError unless ``remat`` is a non-negative int (0: off, k: chunk length)."""
  if not isinstance(remat, int) or isinstance(remat, bool) or remat < 0:
    raise ValueError(f'remat must be a non-negative integer (0 = off, k = steps per '
                     f'checkpointed chunk), got {remat!r}')


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
        hoist=None, unroll=1, dtype=None, engine='auto', remat=0):
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
      inside it step by step (False); None picks ``default_hoist(cell, batch)``.
      Sequential engine only (the associative one always projects the whole
      sequence); there, on CPU, hoisting defers the gradient of ``DEFERRED_CELLS``'
      recurrent kernel to one matmul after the loop.
    unroll: passed to ``jax.lax.scan`` (sequential engine only).
    dtype: compute dtype of the matmuls (e.g. jnp.bfloat16); carries stay float32.
    engine: one of ``ENGINES``: 'sequential' (``jax.lax.scan``), 'associative'
      (``jax.lax.associative_scan``, cells with ``coefficients`` only) or 'auto'
      (see ``choose_engine``).
    remat: 0, or k > 0 to run chunks of k timesteps under ``jax.checkpoint``
      (see ``chunked``): the same results, O(T/k + k) instead of O(T) memory for
      the backward pass, about one more forward pass of compute.

  Returns:
    ``(final_carry, ys)`` with ys [batch, time, hidden] in float32.
  """
  kernel = params.get('kernel') if isinstance(params, dict) else None
  check_inputs(xs, lengths, None if kernel is None else kernel.shape[0])
  check_remat(remat)
  batch, time, _ = xs.shape
  hoist = default_hoist(cell, batch) if hoist is None else hoist
  if dtype is not None:
    params = jax.tree.map(lambda p: p.astype(dtype), params)
    xs = xs.astype(dtype)
  if reverse:
    xs = xs[:, ::-1] if lengths is None else reverse_valid(xs, lengths)
  carry = cell.initial_carry((batch,)) if initial_carry is None else initial_carry
  mask = None if lengths is None else valid_mask(lengths, time)

  if choose_engine(cell, engine, state_width(carry)) == 'associative':
    loop = lambda xs, carry, mask: associative(cell, params, xs, carry, mask)
  else:
    loop = lambda xs, carry, mask: sequential(cell, params, xs, carry, mask, hoist, unroll)
  carry, ys = chunked(loop, xs, carry, mask, remat) if remat else loop(xs, carry, mask)
  if reverse:
    ys = ys[:, ::-1] if lengths is None else reverse_valid(ys, lengths)
  return carry, ys


def masked_step(cell, params, carry, px_t, m_t):
  """``cell.recur``, then the carry kept and the output zeroed where ``m_t`` [batch] is False."""
  new, y_t = cell.recur(params, carry, px_t)
  if m_t is not None:
    new = jax.tree.map(lambda n, o: jnp.where(m_t[:, None], n, o), new, carry)
    y_t = jnp.where(m_t[:, None], y_t, 0)
  return new, y_t


def sequential(cell, params, xs, carry, mask, hoist: bool, unroll: int):
  """``cell.recur`` step by step with ``jax.lax.scan``.

  xs [batch, time, features], mask [time, batch] | None -> (carry, ys [batch, time, hidden]).
  """
  xs = jnp.swapaxes(xs, 0, 1)  # [time, batch, features]: each step reads a contiguous slab
  if hoist:
    xs = cell.project(params, xs)  # [time, batch, proj]
    if deferrable(cell) and jax.default_backend() == 'cpu':
      recurrent = {k: params[k] for k in ('recurrent_kernel', 'recurrent_bias') if k in params}
      carry, ys = deferred(cell, unroll, recurrent, xs, carry, mask)
      return carry, jnp.swapaxes(ys, 0, 1)

  def step(carry, inputs):
    x_t, m_t = inputs
    return masked_step(cell, params, carry, x_t if hoist else cell.project(params, x_t), m_t)

  carry, ys = jax.lax.scan(step, carry, (xs, mask), unroll=unroll)
  return carry, jnp.swapaxes(ys, 0, 1)  # [batch, time, hidden]


def recurrent_scan(cell, unroll, recurrent, px, carry, mask):
  """The scan of a ``DEFERRED_CELLS`` cell over projected inputs px [time, batch, proj]
  -> ((carry, ys [time, batch, hidden]), (h_{t-1} [time, batch, hidden], the cell's
  ``deferred_aux`` per step or None))."""
  aux = getattr(cell, 'deferred_aux', lambda params, h, px_t: None)

  def step(carry, inputs):
    new, y_t = masked_step(cell, recurrent, carry, *inputs)
    h = cell.output(carry)
    return new, (y_t, (h, aux(recurrent, h, inputs[0])))

  carry, (ys, saved) = jax.lax.scan(step, carry, (px, mask), unroll=unroll)
  return (carry, ys), saved


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def deferred(cell, unroll, recurrent, px, carry, mask):
  """``recurrent_scan`` whose backward pass leaves the recurrent parameters out of the loop.

  recurrent {'recurrent_kernel': U [hidden, proj], optionally 'recurrent_bias' [proj]},
  px [time, batch, proj], mask [time, batch] | None -> (carry, ys [time, batch, hidden]).
  The recurrence reads U and b_h only in ph_t = h_{t-1} U + b_h, so dU = sum_t h_{t-1}^T
  dph_t: one [hidden, time * batch] x [time * batch, proj] matmul after the backward
  loop, which then carries only the carry's gradient; dph is dpx (LSTM, RNN) or comes
  from dpx by the cell's ``recurrent_cotangent`` (GRU). Autodiff of the plain scan
  instead adds a rank-``batch`` outer product into all of dU at every step (slow on CPU
  at small batch; measured numbers at ``DEFERRED_MAX_BATCH_CPU``).
  """
  return recurrent_scan(cell, unroll, recurrent, px, carry, mask)[0]


def _deferred_fwd(cell, unroll, recurrent, px, carry, mask):
  run_ = lambda px, carry: recurrent_scan(cell, unroll, recurrent, px, carry, mask)
  out, backward, saved = jax.vjp(run_, px, carry, has_aux=True)  # U, b_h held fixed
  return out, (backward, saved, recurrent)


def _deferred_bwd(cell, unroll, residuals, cotangents):
  del unroll
  backward, (h_prev, aux), recurrent = residuals
  dpx, dcarry = backward(cotangents)  # the loop: dpx [time, batch, proj]
  dph = dpx if aux is None else cell.recurrent_cotangent(aux, dpx)
  dph = dph.reshape(-1, dph.shape[-1])  # [time * batch, proj]
  h_prev = h_prev.reshape(-1, h_prev.shape[-1]).astype(dph.dtype)  # [time * batch, hidden]
  grads = {'recurrent_kernel': jnp.matmul(h_prev.T, dph, preferred_element_type=jnp.float32)}
  if 'recurrent_bias' in recurrent:
    grads['recurrent_bias'] = jnp.sum(dph, 0, dtype=jnp.float32)
  grads = {k: g.astype(recurrent[k].dtype) for k, g in grads.items()}
  return grads, dpx, dcarry, None


deferred.defvjp(_deferred_fwd, _deferred_bwd)


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

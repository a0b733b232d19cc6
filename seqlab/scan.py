"""The one place that loops over time.

``run`` takes any cell (see ``seqlab.cells.base``) over a batch ``[batch, time,
features]`` with ``jax.lax.scan``. Padding is a mask, not a branch: past a sequence's
length its carry stays as it was and its outputs are zero, so the final carry is the
carry at the sequence's own last valid step (PyTorch's packed-sequence semantics).
"""
import jax
import jax.numpy as jnp


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


def run(cell, params, xs, *, lengths=None, initial_carry=None, reverse=False,
        hoist=None, unroll=1, dtype=None):
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
      inside it step by step (False); None picks ``default_hoist()``.
    unroll: passed to ``jax.lax.scan``.
    dtype: compute dtype of the matmuls (e.g. jnp.bfloat16); carries stay float32.

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
  ys = jnp.swapaxes(ys, 0, 1)  # [batch, time, hidden]
  if reverse:
    ys = ys[:, ::-1] if lengths is None else reverse_valid(ys, lengths)
  return carry, ys

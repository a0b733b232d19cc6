"""What every cell provides, and the helpers cells share.

A cell is a frozen dataclass of hyperparameters with pure functions:

  init(key, input_size) -> params            a dict of float32 arrays
  initial_carry(batch_shape) -> carry        float32 zeros, a pytree
  project(params, x) -> px                   [..., input_size] -> [..., proj_size]
  recur(params, carry, px_t) -> (carry, y_t) one timestep: scan me
  output(carry) -> h                         the hidden state a carry exposes

``project`` is everything that does not depend on the carry (the input kernel of
every gate and its bias), so ``seqlab.scan`` may run it over all timesteps at once
outside the loop, or inside it step by step; ``recur`` is the recurrence alone.
A full step is ``recur(params, carry, project(params, x_t))``.

LSTM, Elman RNN and the cuDNN-convention GRU also split ``recur`` into its parts
(``gated_recur``): ``combine(px_t, ph_t) -> pre`` (linear; ph_t = ``recurrent``) and
``gates(carry, pre) -> (carry, y_t)`` (the elementwise gate arithmetic), so that
``seqlab.scan.fused`` can take every weight's gradient out of the backward loop.
A cell may also write the backward of ``gates`` by hand (the GRU does):
``gates_fwd(carry, pre) -> ((carry, y_t), res)`` and ``gates_bwd(carry, res, dcarry,
dy) -> (dcarry, dpre)``, the VJP of ``gates``; without them ``fused`` takes JAX's VJP
of ``gates``, recomputing it from ``pre``.

Compute dtype: ``recur`` does its matmuls in the dtype of ``px_t`` and its gate
arithmetic and carry in float32, so bfloat16 compute keeps float32 carries.
"""
import jax.numpy as jnp


def step(cell, params, carry, x_t):
  """One full timestep ``(params, carry, x_t) -> (carry, y_t)`` of ``cell``."""
  return cell.recur(params, carry, cell.project(params, x_t))


def dense_project(params, x):
  """``x @ kernel + bias`` in the dtype of ``x``: [..., in] -> [..., proj]."""
  kernel = params['kernel'].astype(x.dtype)
  return add_bias(x @ kernel, params['bias'].astype(x.dtype))


def add_bias(y, bias):
  """``y + bias`` with the bias broadcast explicitly: [..., n] + [n] -> [..., n]
  (no implicit rank promotion)."""
  return y + bias.reshape((1,) * (y.ndim - 1) + bias.shape)


def add(px, ph):
  """``px + ph`` in float32: how LSTM and Elman RNN combine the projected input with
  the recurrent term (their ``combine``)."""
  return px.astype(jnp.float32) + ph


def gated_recur(cell, params, carry, px_t):
  """The step of a cell made of ``combine`` and ``gates`` (LSTM, Elman RNN, the
  cuDNN-convention GRU): ``gates(carry, preactivations(...))``; ``scan.fused`` runs
  the same two pieces."""
  return cell.gates(carry, preactivations(cell, params, carry, px_t))


def preactivations(cell, params, carry, px_t):
  """``combine(px_t, recurrent(params, h, px_t.dtype))`` with h = ``output(carry)``:
  what ``gates`` reads in a step of a ``gated_recur`` cell."""
  return cell.combine(px_t, recurrent(params, cell.output(carry), px_t.dtype))


def recurrent(params, h, dtype):
  """ph = h U (+ b_h): the one place where a step of LSTM, Elman RNN and the
  cuDNN-convention GRU reads the carry through a weight; ``scan.fused`` relies on it.

  h [..., hidden], params['recurrent_kernel'] U [hidden, proj], optional
  params['recurrent_bias'] [proj] -> [..., proj] float32, the matmul in ``dtype``.
  """
  ph = matmul(h, params['recurrent_kernel'], dtype)
  if 'recurrent_bias' in params:
    ph = add_bias(ph, params['recurrent_bias'].astype(jnp.float32))
  return ph


def matmul(h, u, dtype):
  """``h @ u`` in the compute ``dtype``, returned as float32: [..., H] -> [..., G*H]."""
  return (h.astype(dtype) @ u.astype(dtype)).astype(jnp.float32)


def zeros(batch_shape, hidden_size):
  return jnp.zeros(tuple(batch_shape) + (hidden_size,), jnp.float32)

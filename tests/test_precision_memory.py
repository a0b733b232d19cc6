"""Memory of rematerialisation (``remat``) and training in bfloat16: the same numbers,
less memory. (That remat and the fused scan compute the plain scan's numbers is in
tests/test_scan.py.)

Memory is XLA's compiled ``memory_analysis()`` of the training step: a measurement of
the program, not of a run, so it does not depend on the machine's load.
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import load_config
from seqlab import bench
from seqlab import cells
from seqlab import train


# ----------------------------------------------------------------------------- remat

@pytest.mark.parametrize('hoist', [True, False])
@pytest.mark.parametrize('name', ['lstm', 'gru'])
def test_remat_temp_memory_is_well_below_plain(name, hoist):
  """T = 2000: the plain scan keeps every step's gates for the backward pass; remat
  (k = 45 ~ sqrt T) keeps 45 chunk carries and one chunk's residuals. What stays
  O(T) is the layer's input, output and output gradient, which remat cannot drop. The
  fixed matmul scratch (32 MiB on a Hopper GPU, 0 on CPU) is left out of both."""
  shape = bench.Shape(4, 2000, 64)
  stats = {k: bench.memory_stats(bench.CellModel(cells.make_cell(name, 64), hoist, k), shape, 16)
           for k in (0, 45)}
  temp = {k: s['temp_bytes'] - s['workspace_bytes'] for k, s in stats.items()}
  assert temp[45] < 0.5 * temp[0], temp


def remat_bound_bytes(time, k, batch, hidden, inputs):
  """A float32 upper bound on the temp memory of an LSTM training step under remat=k.

  ``time / k`` chunk-boundary carries (c, h): 2 B H each; one chunk's residuals, at
  most 16 B H per step for k steps (the plain scan keeps ~12 B H per step: four gates,
  their activations, c, tanh c, h); and the inputs in up to 4 copies (time-major,
  padded, chunked): 4 T B I. The head pools the last step, so there is no [T, H] output.
  """
  words = (-(-time // k)) * 2 * batch * hidden + k * 16 * batch * hidden + 4 * time * batch * inputs
  return 4 * words


def test_ten_thousand_steps_train_in_bounded_memory():
  """One training step of the adding task at T = 10,000 (LSTM 32, batch 2) with remat=100:
  the same loss and gradient norm as without remat, and temp memory under the bound,
  which the plain scan's (~12 B H floats per step, 30 MB here) is far above. Both leave
  out the fixed matmul scratch (32 MiB on a Hopper GPU, 0 on CPU)."""
  config = load_config('adding')
  config.task.length, config.model.hidden_size, config.train.batch_size = 10_000, 32, 2

  def one_step(remat):
    config.model.remat = remat
    task, model, optimizer = train.build(config)
    batch = task.batch('train', 0, 2)
    state = train.create_state(model, optimizer, batch, config.seed)
    step = jax.jit(functools.partial(train.train_step, model=model, optimizer=optimizer,
                                     spec=task.spec))
    compiled = step.lower(state, batch).compile()
    new_state, metrics = compiled(state, batch)
    temp = compiled.memory_analysis().temp_size_in_bytes - bench.dot_workspace_bytes(2, 32)
    return temp, new_state, metrics

  temp, state, metrics = one_step(100)
  plain_temp, _, plain_metrics = one_step(0)
  bound = remat_bound_bytes(10_000, 100, batch=2, hidden=32, inputs=2)
  assert temp < bound < plain_temp, (temp, bound, plain_temp)
  assert int(state['bad_step']) == 0 and np.isfinite(metrics['loss'])
  np.testing.assert_allclose(metrics['loss'], plain_metrics['loss'], rtol=1e-5)
  np.testing.assert_allclose(metrics['grad_norm'], plain_metrics['grad_norm'], rtol=1e-4)


# ----------------------------------------------------------------------------- bfloat16

def adding_curve(cell: str, dtype: str, steps=200, log_every=20):
  """Trains the adding task (T = 20, hidden 32, lr 1e-2) for ``steps`` steps.

  Returns (the loss of every ``log_every``-th step, window means of the loss over
  each ``log_every`` steps, the final state, the compiled step's HLO text, the carries).
  """
  config = load_config('adding')
  config.model.cell, config.model.dtype, config.model.hidden_size = cell, dtype, 32
  config.task.length, config.optim.lr, config.train.steps = 20, 1e-2, steps
  task, model, optimizer = train.build(config)
  batch_size = config.train.batch_size
  batch = task.batch('train', 0, batch_size)
  state = train.create_state(model, optimizer, batch, config.seed)
  step = jax.jit(functools.partial(train.train_step, model=model, optimizer=optimizer,
                                   spec=task.spec))
  hlo = step.lower(state, batch).as_text()
  losses = []
  for i in range(steps):
    state, metrics = step(state, task.batch('train', i, batch_size))
    losses.append(float(metrics['loss']))
  losses = np.array(losses)
  _, carries = train.apply_model(model, state['params'], batch)
  return losses[::log_every], losses.reshape(-1, log_every).mean(1), state, hlo, carries


@pytest.mark.parametrize('cell', ['lstm', 'gru'])
def test_bfloat16_training_follows_float32(cell):
  """The same run in float32 and with bfloat16 matmuls: every logged loss within 10%,
  the window means within 5% (or 2% of the first); parameters, Adam moments and carries stay float32, and
  the step really multiplies in bfloat16. (In 200 steps the GRU solves the task, loss
  0.26 -> ~0.01, the LSTM gets from 0.22 to ~0.15: both curves move.)"""
  f32_logged, f32_means, _, f32_hlo, _ = adding_curve(cell, 'float32')
  logged, means, state, hlo, carries = adding_curve(cell, 'bfloat16')
  assert 'bf16' in hlo and 'bf16' not in f32_hlo
  assert not np.array_equal(logged, f32_logged)  # bfloat16 did change the numbers
  # 10%, or 0.25% of the starting loss: one batch's loss near zero (the GRU's ~0.02 at
  # step 180) moves by up to 5% with the CPU's bfloat16 dot (1% with XLA held to AVX2).
  np.testing.assert_allclose(logged, f32_logged, rtol=0.10, atol=0.0025 * f32_logged[0])
  # 5% relative, or 2% of the starting loss once the loss is near zero (GRU: 0.008).
  np.testing.assert_allclose(means, f32_means, rtol=0.05, atol=0.02 * f32_means[0])
  assert means[-1] < 0.8 * means[0]
  for tree in (state['params'], state['opt_state'], carries):
    dtypes = {x.dtype for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.floating)}
    assert dtypes == {jnp.dtype(jnp.float32)}, dtypes


# ----------------------------------------------------------------------------- scan.fused



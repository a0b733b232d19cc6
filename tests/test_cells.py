"""The cells, seqlab.scan and seqlab.layers against a float64 NumPy reference.

``np_step`` is written from the equations in the docstrings of seqlab/cells/*.py
(PyTorch's for the reset-after GRU, whose recurrent bias b_hh enters all three gates),
not from our code. On top of it: padding, reversal, gradients, carries across
chunks, recompilation and the names and initialisers a config can ask for. The layers'
tests (tests/test_layers.py) check against the same reference.
"""
import functools

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from seqlab import cells
from seqlab import layers
from seqlab import scan

B, T, IN, H = 3, 6, 3, 4
LENGTHS = np.array([6, 2, 4], np.int32)
CELL_NAMES = ('rnn', 'irnn', 'lstm', 'gru_reset_after', 'gru_reset_before')


# ----------------------------------------------------------------------------- reference

def sigmoid(x):
  return 1.0 / (1.0 + np.exp(-x))


def np_step(name, p, carry, x):
  """One timestep in float64: (params, carry, x [batch, in]) -> (carry, y [batch, H])."""
  if name in ('rnn', 'irnn'):  # h = act(x W + h U + b)
    pre = x @ p['kernel'] + carry @ p['recurrent_kernel'] + p['bias']
    h = np.tanh(pre) if name == 'rnn' else np.maximum(pre, 0.0)
    return h, h
  if name == 'lstm':
    c, h = carry
    i, f, g, o = np.split(x @ p['kernel'] + h @ p['recurrent_kernel'] + p['bias'], 4, axis=-1)
    c = sigmoid(f) * c + sigmoid(i) * np.tanh(g)
    h = sigmoid(o) * np.tanh(c)
    return (c, h), h
  h = carry
  x_r, x_z, x_n = np.split(x @ p['kernel'] + p['bias'], 3, axis=-1)
  u_r, u_z, u_n = np.split(p['recurrent_kernel'], 3, axis=-1)
  if name == 'gru_reset_after':
    b_hr, b_hz, b_hn = np.split(p['recurrent_bias'], 3)
    r = sigmoid(x_r + h @ u_r + b_hr)
    z = sigmoid(x_z + h @ u_z + b_hz)
    n = np.tanh(x_n + r * (h @ u_n + b_hn))
  else:
    r = sigmoid(x_r + h @ u_r)
    z = sigmoid(x_z + h @ u_z)
    n = np.tanh(x_n + (r * h) @ u_n)
  h = (1.0 - z) * n + z * h
  return h, h


def np_run(name, p, xs, carry=None):
  """``np_step`` over every step of xs [batch, time, in] -> (carry, ys [batch, time, H])."""
  zeros = np.zeros((xs.shape[0], H))
  if carry is None:
    carry = (zeros, zeros) if name == 'lstm' else zeros
  ys = []
  for t in range(xs.shape[1]):
    carry, y = np_step(name, p, carry, xs[:, t])
    ys.append(y)
  return carry, np.stack(ys, axis=1)


# ----------------------------------------------------------------------------- helpers

def perturb(params, seed=0):
  """``params`` with every bias moved away from its zero (or 1.0) initialisation."""
  rng = np.random.default_rng(seed)
  return {k: v + 0.5 * rng.standard_normal(v.shape).astype(np.float32) if 'bias' in k else v
          for k, v in params.items()}


def make_params(name, seed=0):
  cell = cells.make_cell(name, H)
  return cell, perturb(cell.init(jax.random.key(seed), IN), seed)


def stacked_variables(layer, seed=0):
  """Variables of a bidirectional ``StackedRNN`` built from its cell's own ``init``."""
  cell = layer.make_cell()
  keys = iter(jax.random.split(jax.random.key(seed), 2 * layer.num_layers))
  tree, size = {}, IN
  for k in range(layer.num_layers):
    tree[f'layer_{k}'] = {d: {'cell': perturb(cell.init(next(keys), size), seed + k)}
                          for d in ('forward', 'backward')}
    size = layer.output_size
  return {'params': tree}


def make_inputs(seed=0, shape=(B, T, IN)):
  return np.random.default_rng(seed + 100).standard_normal(shape).astype(np.float32)


def to64(tree):
  return jax.tree.map(lambda a: np.asarray(a, np.float64), tree)


def rel_error(got, want):
  """max |got - want| / max |want| over all leaves of two pytrees of one structure."""
  assert jax.tree.structure(got) == jax.tree.structure(want)
  got = np.concatenate([np.ravel(a) for a in jax.tree.leaves(got)])
  want = np.concatenate([np.ravel(a) for a in jax.tree.leaves(want)])
  return float(np.max(np.abs(got - want)) / np.max(np.abs(want)))


def row(tree, i):
  """Sequence ``i`` of every leaf of a batched pytree, keeping a batch axis of 1."""
  return jax.tree.map(lambda a: np.asarray(a)[i:i + 1], tree)


@functools.partial(jax.jit, static_argnames=('cell', 'reverse', 'hoist'))
def run(cell, params, xs, lengths=None, initial_carry=None, reverse=False, hoist=None):
  """``scan.run`` returning (ys, carry), compiled once per cell and signature."""
  carry, ys = scan.run(cell, params, xs, lengths=lengths, initial_carry=initial_carry,
                       reverse=reverse, hoist=hoist)
  return ys, carry


def padded_inputs():
  """A [batch, time, in] batch with garbage (7.0) past each of ``LENGTHS``."""
  xs = make_inputs()
  xs[padding_mask()] = 7.0
  return xs


def padding_mask():
  return np.arange(T)[None, :] >= LENGTHS[:, None]  # [batch, time], True past each length


# ----------------------------------------------------------------------------- numbers

@pytest.mark.parametrize('hoist', [True, False])
@pytest.mark.parametrize('name', CELL_NAMES)
def test_cell_matches_numpy(name, hoist):
  cell, params = make_params(name)
  xs = make_inputs()
  ys, carry = run(cell, params, jnp.asarray(xs), hoist=hoist)
  want_carry, want_ys = np_run(name, to64(params), xs.astype(np.float64))
  assert ys.dtype == jnp.float32 and ys.shape == (B, T, H)
  assert rel_error(ys, want_ys) < 1e-5
  assert rel_error(carry, want_carry) < 1e-5


@pytest.mark.parametrize('name', CELL_NAMES)
def test_step_is_project_then_recur(name):
  cell, params = make_params(name)
  xs = make_inputs()
  carry = cell.initial_carry((B,))
  for t in range(2):
    carry, y = cells.step(cell, params, carry, jnp.asarray(xs[:, t]))
  want_carry, want_ys = np_run(name, to64(params), xs[:, :2].astype(np.float64))
  assert rel_error(y, want_ys[:, -1]) < 1e-5
  assert rel_error(carry, want_carry) < 1e-5


# ----------------------------------------------------------------------------- padding

@pytest.mark.parametrize('reverse', [False, True])
@pytest.mark.parametrize('name', CELL_NAMES)
def test_padded_batch_equals_each_sequence_alone(name, reverse):
  """Each row of a padded batch is its valid prefix run alone (read backward if reverse)."""
  cell, params = make_params(name)
  xs = padded_inputs()
  ys, carry = run(cell, params, jnp.asarray(xs), jnp.asarray(LENGTHS), reverse=reverse)
  np.testing.assert_array_equal(np.asarray(ys)[padding_mask()], 0.0)
  for i, n in enumerate(LENGTHS):
    x = xs[i:i + 1, :n].astype(np.float64)
    want_carry, want_ys = np_run(name, to64(params), x[:, ::-1] if reverse else x)
    assert rel_error(ys[i:i + 1, :n], want_ys[:, ::-1] if reverse else want_ys) < 1e-5
    assert rel_error(row(carry, i), want_carry) < 1e-5


# ----------------------------------------------------------------------------- gradients

@pytest.mark.parametrize('name', CELL_NAMES)
def test_gradients_match_finite_differences(name):
  """jax.grad of our float32 run against central differences of the float64 reference.

  The differences are taken on the NumPy reference in float64, so no x64 mode is
  needed (and none can leak into other tests); our cells keep their gate arithmetic
  in float32 whatever the input dtype, so differencing them would measure rounding.
  """
  cell, params = make_params(name)
  lengths = np.array([4, 2], np.int32)
  xs = make_inputs(shape=(2, 4, IN))
  weights = np.random.default_rng(7).standard_normal((2, 4, H)).astype(np.float32)

  def loss(params, xs):
    _, ys = scan.run(cell, params, xs, lengths=jnp.asarray(lengths))
    return jnp.sum(ys * weights)

  def np_loss(params, xs):
    return sum(np.sum(np_run(name, params, xs[i:i + 1, :n])[1] * weights[i:i + 1, :n])
               for i, n in enumerate(lengths))

  grads = jax.jit(jax.grad(loss, argnums=(0, 1)))(params, jnp.asarray(xs))
  leaves, treedef = jax.tree.flatten((to64(params), xs.astype(np.float64)))
  eps = 1e-6

  def central_difference(k, idx):
    loss_at = []
    for delta in (eps, -eps):
      moved = [a.copy() for a in leaves]
      moved[k][idx] += delta
      loss_at.append(np_loss(*jax.tree.unflatten(treedef, moved)))
    return (loss_at[0] - loss_at[1]) / (2 * eps)

  want = [np.array([central_difference(k, idx) for idx in np.ndindex(leaf.shape)]).reshape(leaf.shape)
          for k, leaf in enumerate(leaves)]
  assert rel_error(grads, jax.tree.unflatten(treedef, want)) < 1e-4
  np.testing.assert_array_equal(np.asarray(grads[1])[1, 2:], 0.0)  # padded inputs: no gradient


# ----------------------------------------------------------------------------- compilation

def test_second_call_does_not_recompile():
  layer = layers.StackedRNN(cell='rnn', hidden_size=H, num_layers=1, bidirectional=True)
  traces = []

  @jax.jit
  def loss_and_grad(variables, xs, lengths):
    traces.append(None)  # runs once per trace
    loss = lambda v: jnp.sum(layer.apply(v, xs, lengths)[0] ** 2)
    return jax.value_and_grad(loss)(variables)

  variables = stacked_variables(layer)
  loss_and_grad(variables, jnp.asarray(make_inputs()), jnp.asarray(LENGTHS))
  other_lengths = np.array([1, 6, 3], np.int32)  # new values, same shapes
  loss_and_grad(variables, jnp.asarray(make_inputs(seed=1)), jnp.asarray(other_lengths))
  assert len(traces) == 1
  assert loss_and_grad._cache_size() == 1


# ----------------------------------------------------------------------------- carries

@pytest.mark.parametrize('name', CELL_NAMES)
def test_two_chunks_equal_one_run(name):
  """First chunk's final carry as the second's initial carry == one run (with padding)."""
  cell, params = make_params(name)
  xs, lengths, split = jnp.asarray(padded_inputs()), jnp.asarray(LENGTHS), T // 2
  ys, carry = run(cell, params, xs, lengths)
  zeros = cell.initial_carry((B,))
  ys_a, carry_a = run(cell, params, xs[:, :split], jnp.minimum(lengths, split), zeros)
  ys_b, carry_b = run(cell, params, xs[:, split:], jnp.maximum(lengths - split, 0), carry_a)
  np.testing.assert_allclose(jnp.concatenate([ys_a, ys_b], axis=1), ys, rtol=1e-6, atol=1e-6)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6), carry_b, carry)


# ----------------------------------------------------------------------------- names, inits

def test_unknown_cell_lists_the_choices():
  with pytest.raises(ValueError, match='nope') as info:
    cells.make_cell('nope', 4)
  for name in cells.CELLS:
    assert repr(name)[1:-1] in str(info.value)


def test_irnn_recurrent_kernel_is_identity():
  cell = cells.make_cell('irnn', H)
  assert cell.activation == 'relu'
  params = cell.init(jax.random.key(0), IN)
  np.testing.assert_array_equal(params['recurrent_kernel'], np.eye(H))


@pytest.mark.parametrize('forget_bias', [None, 0.0, 2.5])
def test_lstm_forget_bias(forget_bias):
  options = {} if forget_bias is None else {'forget_bias': forget_bias}
  want = np.zeros(4 * H)
  want[H:2 * H] = 1.0 if forget_bias is None else forget_bias  # gates [i, f, g, o]
  layer = layers.StackedRNN(cell='lstm', hidden_size=H, cell_options=flax.core.FrozenDict(options))
  for cell in (cells.make_cell('lstm', H, **options), layer.make_cell()):
    np.testing.assert_array_equal(cell.init(jax.random.key(0), IN)['bias'], want)

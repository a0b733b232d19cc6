"""seqlab.layers: RNN, Bidirectional and StackedRNN against the float64 NumPy reference of
tests/test_cells.py, with padding, carries across chunks, remat, and one ScanOptions."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import assert_trees_close
from seqlab import cells
from seqlab import layers
from seqlab import scan
from test_cells import (B, H, IN, LENGTHS, T, make_inputs, make_params, np_run, padded_inputs,
                        padding_mask, rel_error, row, stacked_variables, to64)


@pytest.mark.parametrize('layer', ['rnn', 'bidirectional', 'stacked'])
def test_every_scan_gets_the_layers_one_options_object(layer, monkeypatch):
  """The ``scan`` field reaches every ``scan.run`` of the layer as it is: no option is
  re-listed or dropped on the way (two layers, both directions)."""
  seen = []
  run = scan.run
  monkeypatch.setattr(scan, 'run', lambda *a, options, **kw: seen.append(options) or run(
      *a, options=options, **kw))
  options = scan.ScanOptions(hoist=True, unroll=2, engine='sequential', remat=3, fuse=False)
  cell = cells.make_cell('gru', H)
  module = {'rnn': layers.RNN(cell, scan=options),
            'bidirectional': layers.Bidirectional(cell, scan=options),
            'stacked': layers.StackedRNN('gru', H, num_layers=2, bidirectional=True,
                                         scan=options)}[layer]
  module.init(jax.random.key(0), jnp.asarray(make_inputs()))
  assert seen and all(o is options for o in seen)
  assert len(seen) == {'rnn': 1, 'bidirectional': 2, 'stacked': 4}[layer]


def test_stacked_rnn_checks_its_options_against_its_cell_at_construction():
  with pytest.raises(ValueError, match="engine='associative' needs a diagonal linear"):
    layers.StackedRNN('gru', H, scan=scan.ScanOptions(engine='associative'))
  layers.StackedRNN('mingru', H, scan=scan.ScanOptions(engine='associative'))


@pytest.mark.parametrize('name', ['lstm', 'gru_reset_after'])
def test_bidirectional_padded_equals_each_sequence_alone(name):
  """layers.Bidirectional on a padded batch against itself on each sequence alone."""
  layer = layers.Bidirectional(cells.make_cell(name, H))
  cell_params = lambda seed: {'cell': make_params(name, seed)[1]}
  variables = {'params': {'forward': cell_params(0), 'backward': cell_params(1)}}
  apply = jax.jit(layer.apply)
  xs = padded_inputs()
  ys, carry = apply(variables, jnp.asarray(xs), jnp.asarray(LENGTHS))
  assert ys.shape == (B, T, 2 * H)
  np.testing.assert_array_equal(np.asarray(ys)[padding_mask()], 0.0)
  for i, n in enumerate(LENGTHS):
    ys_i, carry_i = apply(variables, jnp.asarray(xs[i:i + 1, :n]))
    np.testing.assert_allclose(ys[i, :n], ys_i[0], rtol=1e-6, atol=1e-6)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6),
                 row(carry, i), carry_i)


def np_stacked_bidirectional(name, tree, x):
  """The float64 reference of a bidirectional StackedRNN on one sequence x [1, n, in]."""
  carries = []
  for k in range(len(tree)):
    p = to64(tree[f'layer_{k}'])
    fwd_carry, fwd = np_run(name, p['forward']['cell'], x)
    bwd_carry, bwd = np_run(name, p['backward']['cell'], x[:, ::-1])
    x = np.concatenate([fwd, bwd[:, ::-1]], axis=-1)
    carries.append((fwd_carry, bwd_carry))
  return x, tuple(carries)


@pytest.mark.parametrize('name', ['rnn', 'lstm'])
def test_stacked_bidirectional_padded_equals_each_sequence_alone(name):
  layer = layers.StackedRNN(cell=name, hidden_size=H, num_layers=2, bidirectional=True)
  variables = stacked_variables(layer)
  xs = padded_inputs()
  expected = jax.eval_shape(layer.init, jax.random.key(0), jnp.asarray(xs))
  assert jax.tree.structure(expected) == jax.tree.structure(variables)  # the documented tree
  ys, carries = jax.jit(layer.apply)(variables, jnp.asarray(xs), jnp.asarray(LENGTHS))
  np.testing.assert_array_equal(np.asarray(ys)[padding_mask()], 0.0)
  for i, n in enumerate(LENGTHS):
    want_ys, want_carries = np_stacked_bidirectional(
        name, variables['params'], xs[i:i + 1, :n].astype(np.float64))
    assert rel_error(ys[i:i + 1, :n], want_ys) < 1e-5
    assert rel_error(row(carries, i), want_carries) < 1e-5


def test_stacked_two_chunks_equal_one_run():
  layer = layers.StackedRNN(cell='lstm', hidden_size=H, num_layers=2)
  cell = layer.make_cell()
  variables = {'params': {'layer_0': {'cell': cell.init(jax.random.key(0), IN)},
                          'layer_1': {'cell': cell.init(jax.random.key(1), H)}}}
  apply = jax.jit(lambda xs, carry: layer.apply(variables, xs, initial_carry=carry))
  xs, zeros = jnp.asarray(make_inputs()), layer.initial_carry(B)
  ys, carries = apply(xs, zeros)
  ys_a, carries_a = apply(xs[:, :T // 2], zeros)
  ys_b, carries_b = apply(xs[:, T // 2:], carries_a)
  np.testing.assert_allclose(jnp.concatenate([ys_a, ys_b], axis=1), ys, rtol=1e-6, atol=1e-6)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6),
               carries_b, carries)


def test_stacked_rnn_unknown_cell_fails_at_construction():
  with pytest.raises(ValueError, match='nope'):
    layers.StackedRNN(cell='nope', hidden_size=H)


@pytest.mark.parametrize('name', ['lstm', 'gru'])
def test_bidirectional_stack_remat_equals_plain(name):
  """A two-layer bidirectional StackedRNN: outputs, carries and parameter gradients."""
  xs = jax.random.normal(jax.random.key(1), (3, 23, 3))
  lengths = jnp.array([23, 5, 17], jnp.int32)
  make = lambda remat: layers.StackedRNN(name, 6, num_layers=2, bidirectional=True,
                                        scan=scan.ScanOptions(remat=remat))
  variables = make(0).init(jax.random.key(0), xs, lengths)

  def loss(variables, remat):
    ys, carries = make(remat).apply(variables, xs, lengths)
    return jnp.sum(jnp.sin(ys)), (ys, carries)
  grad = jax.jit(jax.grad(loss, has_aux=True), static_argnums=1)
  want_grads, want_out = grad(variables, 0)
  got_grads, got_out = grad(variables, 4)
  assert_trees_close(got_out, want_out)
  assert_trees_close(got_grads, want_grads, rtol=1e-4)



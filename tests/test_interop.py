"""seqlab.interop against PyTorch itself: same weights, same padded batch, same numbers."""
import builtins

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip('torch')

from seqlab import cells
from seqlab import interop

IN, HIDDEN, T = 5, 6, 7
LENGTHS = np.array([7, 3, 5, 1], np.int32)

MODULES = {
    'rnn_tanh': lambda **kw: torch.nn.RNN(IN, HIDDEN, nonlinearity='tanh', **kw),
    'rnn_relu': lambda **kw: torch.nn.RNN(IN, HIDDEN, nonlinearity='relu', **kw),
    'lstm': lambda **kw: torch.nn.LSTM(IN, HIDDEN, **kw),
    'gru': lambda **kw: torch.nn.GRU(IN, HIDDEN, **kw),
}


def make_module(kind, seed=0, **kwargs):
  torch.manual_seed(seed)
  return MODULES[kind](**kwargs).eval()


def make_inputs(seed=0):
  """A padded float32 batch [batch, time, in]: random on valid steps, 0 after."""
  xs = np.random.default_rng(seed).standard_normal((len(LENGTHS), T, IN)).astype(np.float32)
  xs[np.arange(T)[None, :] >= LENGTHS[:, None]] = 0.0
  return xs


def torch_packed(module, xs, lengths):
  """torch on a batch-major padded batch, packed: (outputs [batch, time, D*H], final states)."""
  x = torch.from_numpy(xs)
  if not module.batch_first:
    x = x.transpose(0, 1)  # [time, batch, in]
  packed = torch.nn.utils.rnn.pack_padded_sequence(
      x, torch.from_numpy(lengths).long(), batch_first=module.batch_first, enforce_sorted=False)
  with torch.no_grad():
    out, state = module(packed)
  out, _ = torch.nn.utils.rnn.pad_packed_sequence(out, batch_first=module.batch_first,
                                                  total_length=xs.shape[1])
  if not module.batch_first:
    out = out.transpose(0, 1)
  states = state if isinstance(state, tuple) else (state,)
  return out.numpy(), tuple(s.numpy() for s in states)


def rel_error(a, b):
  return float(np.max(np.abs(np.asarray(a) - b)) / np.max(np.abs(b)))


@jax.jit(static_argnums=0)
def apply(layer, params, xs, lengths):
  """``layer.apply``, compiled once per equal layer (batch_first is torch's side only)."""
  return layer.apply(params, xs, lengths=lengths)


def check_matches(module, seed=0):
  layer, params = interop.from_torch(module)
  xs = make_inputs(seed)
  ys, carries = apply(layer, params, jnp.asarray(xs), jnp.asarray(LENGTHS))
  expected_ys, expected_states = torch_packed(module, xs, LENGTHS)
  assert ys.shape == expected_ys.shape
  assert rel_error(ys, expected_ys) < 1e-5
  states = interop.carries_to_torch(layer, carries)
  states = states if isinstance(states, tuple) else (states,)
  assert len(states) == len(expected_states)
  for got, want in zip(states, expected_states):  # h_n (and c_n)
    assert got.shape == want.shape
    assert rel_error(got, want) < 1e-5
  np.testing.assert_array_equal(np.asarray(ys)[np.arange(T)[None, :] >= LENGTHS[:, None]], 0.0)


@pytest.mark.parametrize('batch_first', [True, False])
@pytest.mark.parametrize('bidirectional', [False, True])
@pytest.mark.parametrize('num_layers', [1, 2])
@pytest.mark.parametrize('kind', list(MODULES))
def test_matches_torch(kind, num_layers, bidirectional, batch_first):
  module = make_module(kind, num_layers=num_layers, bidirectional=bidirectional,
                       batch_first=batch_first)
  check_matches(module)


@pytest.mark.parametrize('kind', list(MODULES))
def test_no_bias_matches_torch(kind):
  module = make_module(kind, seed=1, num_layers=2, bidirectional=True, bias=False)
  _, params = interop.from_torch(module)
  for leaf_path, leaf in jax.tree_util.tree_leaves_with_path(params):
    if 'bias' in jax.tree_util.keystr(leaf_path):
      np.testing.assert_array_equal(leaf, 0.0)
  check_matches(module, seed=1)


def test_layer_matches_module():
  module = make_module('rnn_relu', num_layers=3, bidirectional=True, dropout=0.25)
  layer, params = interop.from_torch(module)
  assert (layer.cell, layer.hidden_size, layer.num_layers) == ('rnn', HIDDEN, 3)
  assert layer.bidirectional and layer.dropout == 0.25
  assert layer.make_cell().activation == 'relu'  # the partial's activation='tanh' is overridden
  assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(params))
  # The converted tree is exactly the one the layer would initialise.
  init = jax.eval_shape(layer.init, jax.random.key(0), jnp.zeros((1, T, IN), jnp.float32))
  shapes = lambda tree: jax.tree.map(lambda a: (a.shape, a.dtype), tree)
  assert shapes(init) == shapes(params)


def test_float64_module_gives_float32_params():
  module = make_module('gru').double()
  _, params = interop.from_torch(module)
  assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(params))


def test_proj_size_raises():
  module = make_module('lstm', proj_size=3)
  with pytest.raises(ValueError, match='proj_size'):
    interop.from_torch(module)


def test_not_a_recurrent_module_raises():
  with pytest.raises(TypeError, match='Linear'):
    interop.from_torch(torch.nn.Linear(3, 4))


def test_missing_torch_says_how_to_install(monkeypatch):
  real_import = builtins.__import__

  def no_torch(name, *args, **kwargs):
    if name == 'torch' or name.startswith('torch.'):
      raise ImportError('No module named torch')
    return real_import(name, *args, **kwargs)

  monkeypatch.setattr(builtins, '__import__', no_torch)
  with pytest.raises(ImportError, match=r"pip install 'seqlab\[torch\]'"):
    interop.from_torch(None)


def test_rnn_cell_options_override_partial():
  assert cells.make_cell('rnn', 4, activation='relu').activation == 'relu'
  assert cells.make_cell('rnn', 4).activation == 'tanh'

"""LRU, minGRU, minLSTM and the associative engine of ``seqlab.scan.run``.

Each cell is checked against a float64 NumPy loop written from its paper's equations
(the same weights), and the associative engine against the sequential one: outputs,
final carries and gradients, with padding, reverse, a given initial carry and a
bidirectional two-layer stack.
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from seqlab import cells
from seqlab import layers
from seqlab import scan
from seqlab.models import sequence

LINEAR_CELLS = ('lru', 'mingru', 'minlstm')
IN, HIDDEN, STATE, BATCH, TIME = 5, 8, 6, 3, 12
LENGTHS = np.array([TIME, 7, 1])


def rel_err(x, ref) -> float:
  """max |x - ref| / max |ref| over all leaves."""
  x, ref = jax.tree.leaves(x), jax.tree.leaves(ref)
  num = max(float(np.max(np.abs(np.asarray(a, np.complex128) - np.asarray(b, np.complex128)))) for a, b in zip(x, ref))
  den = max(float(np.max(np.abs(np.asarray(b)))) for b in ref)
  return num / den


# Tiny shapes, many programs: compile time dominates, and LLVM's optimisations (not
# XLA's graph passes) are half of it, so the tests compile without them.
jit = functools.partial(jax.jit, compiler_options={'xla_backend_optimization_level': 0})


def normal(seed, shape):
  """float32 N(0, 1) from NumPy (no program to compile)."""
  return jnp.asarray(np.random.default_rng(seed).normal(size=shape), jnp.float32)


@functools.partial(jit, static_argnums=0)
def init(cell, key):
  return cell.init(key, IN)


@functools.cache
def make(name, key=0):
  """A cell, its params with random (non-zero) biases, and inputs [BATCH, TIME, IN]."""
  cell = cells.make_cell(name, HIDDEN, **({'state_size': STATE} if name == 'lru' else {}))
  params = init(cell, jax.random.key(key))
  if 'bias' in params:
    params['bias'] = normal(key + 100, params['bias'].shape)
  return cell, params, normal(key + 200, (BATCH, TIME, IN))


@functools.partial(jit, static_argnames=('cell', 'reverse', 'engine'))
def run(cell, params, xs, lengths=None, initial_carry=None, reverse=False, engine='auto'):
  return scan.run(cell, params, xs, lengths=lengths, initial_carry=initial_carry,
                  reverse=reverse, engine=engine)


def random_carry(cell, seed):
  h = cell.initial_carry((BATCH,))
  re = normal(seed, h.shape)
  return jax.lax.complex(re, normal(seed + 1, h.shape)) if h.dtype == jnp.complex64 else re


# --- References: plain float64 loops over one batch, from the papers' equations ---------

def sigmoid(x):
  return 1.0 / (1.0 + np.exp(-x))


def g(x):
  """Feng et al. 2024: x + 0.5 for x >= 0, sigmoid(x) below."""
  return np.where(x >= 0, x + 0.5, sigmoid(x))


def lru_reference(params, xs, n):
  """h_t = lambda h_{t-1} + gamma (x_t B); y_t = Re(h_t C) + x_t D (Orvieto et al. 2023)."""
  p = {k: np.asarray(v, np.float64) for k, v in params.items()}
  xs = np.asarray(xs, np.float64)
  B = p['kernel'][:, :n] + 1j * p['kernel'][:, n:2 * n]
  D = p['kernel'][:, 2 * n:]
  C = p['C_re'] + 1j * p['C_im']
  lam = np.exp(-np.exp(p['nu_log']) + 1j * np.exp(p['theta_log']))
  gamma = np.exp(p['gamma_log'])
  h = np.zeros((xs.shape[0], n), np.complex128)
  ys = []
  for t in range(xs.shape[1]):
    h = lam * h + gamma * (xs[:, t] @ B)
    ys.append((h @ C).real + xs[:, t] @ D)
  return h, np.stack(ys, 1)


def mingru_reference(params, xs):
  """z = sigmoid(x W_z + b_z), h~ = g(x W_h + b_h), h = (1 - z) h + z h~."""
  w, b = np.asarray(params['kernel'], np.float64), np.asarray(params['bias'], np.float64)
  hs = w.shape[1] // 2
  h = np.zeros((xs.shape[0], hs))
  ys = []
  for t in range(xs.shape[1]):
    pre = np.asarray(xs[:, t], np.float64) @ w + b
    z, cand = sigmoid(pre[:, :hs]), g(pre[:, hs:])
    h = (1 - z) * h + z * cand
    ys.append(h)
  return h, np.stack(ys, 1)


def minlstm_reference(params, xs):
  """f, i = sigmoid(.), h~ = g(.), h = f/(f+i) h + i/(f+i) h~."""
  w, b = np.asarray(params['kernel'], np.float64), np.asarray(params['bias'], np.float64)
  hs = w.shape[1] // 3
  h = np.zeros((xs.shape[0], hs))
  ys = []
  for t in range(xs.shape[1]):
    pre = np.asarray(xs[:, t], np.float64) @ w + b
    f, i, cand = sigmoid(pre[:, :hs]), sigmoid(pre[:, hs:2 * hs]), g(pre[:, 2 * hs:])
    h = f / (f + i) * h + i / (f + i) * cand
    ys.append(h)
  return h, np.stack(ys, 1)


REFERENCES = {
    'lru': functools.partial(lru_reference, n=STATE),
    'mingru': mingru_reference,
    'minlstm': minlstm_reference,
}


@pytest.mark.parametrize('engine', ['sequential', 'associative'])
@pytest.mark.parametrize('name', LINEAR_CELLS)
def test_matches_numpy_reference(name, engine):
  cell, params, xs = make(name)
  carry, ys = run(cell, params, xs, engine=engine)
  ref_h, ref_ys = REFERENCES[name](params, xs)
  assert ys.shape == (BATCH, TIME, HIDDEN) and ys.dtype == jnp.float32
  assert rel_err(ys, ref_ys) < 1e-5
  assert rel_err(carry, ref_h) < 1e-5


# --- The associative engine against the sequential one ---------------------------------

CASES = {  # (lengths, reverse, initial_carry); the reference tests cover neither
    'padded_carry': (True, False, True),
    'padded_reverse': (True, True, False),
    'reverse_carry': (False, True, True),
}


@pytest.mark.parametrize('case', CASES)
@pytest.mark.parametrize('name', LINEAR_CELLS)
def test_engines_agree(name, case):
  use_lengths, reverse, use_carry = CASES[case]
  cell, params, xs = make(name, key=1)
  kw = dict(lengths=jnp.asarray(LENGTHS) if use_lengths else None, reverse=reverse,
            initial_carry=random_carry(cell, 2) if use_carry else None)
  seq = run(cell, params, xs, engine='sequential', **kw)
  par = run(cell, params, xs, engine='associative', **kw)
  assert rel_err(par, seq) < 1e-5
  if use_lengths:
    assert np.all(np.asarray(par[1])[np.arange(TIME)[None, :] >= LENGTHS[:, None]] == 0)


@pytest.mark.parametrize('name', ['lru', 'minlstm'])  # complex and real carries
def test_bidirectional_stack_engines_agree(name):
  def model(engine):
    return layers.StackedRNN(cell=name, hidden_size=HIDDEN, num_layers=2, bidirectional=True,
                             scan=scan.ScanOptions(engine=engine))
  _, _, xs = make(name, key=3)
  lengths = jnp.asarray(LENGTHS)
  params = jit(model('sequential').init)(jax.random.key(4), xs[:, :1])  # none depends on T
  apply = jit(lambda m, p: m.apply(p, xs, lengths), static_argnums=0)
  seq = apply(model('sequential'), params)
  par = apply(model('associative'), params)
  assert seq[0].shape == (BATCH, TIME, 2 * HIDDEN)
  assert rel_err(par, seq) < 1e-5


@pytest.mark.parametrize('reverse', [False, True])
@pytest.mark.parametrize('name', LINEAR_CELLS)
def test_padded_batch_equals_each_sequence_alone(name, reverse):
  cell, params, xs = make(name, key=5)
  carry, ys = run(cell, params, xs, lengths=jnp.asarray(LENGTHS), reverse=reverse,
                  engine='associative')
  for i, n in enumerate(LENGTHS[1:], start=1):  # the padded ones
    alone_carry, alone_ys = run(cell, params, xs[i:i + 1, :n], reverse=reverse,
                                engine='associative')
    assert rel_err(ys[i:i + 1, :n], alone_ys) < 1e-5
    assert rel_err(carry[i:i + 1], alone_carry) < 1e-5
    assert np.all(np.asarray(ys[i, n:]) == 0)


@pytest.mark.parametrize('name', LINEAR_CELLS)
def test_gradients_agree(name):
  cell, params, xs = make(name, key=6)
  h0 = random_carry(cell, 7)
  w = normal(8, (BATCH, TIME, HIDDEN))

  def loss(params, xs, h0, engine):
    carry, ys = scan.run(cell, params, xs, lengths=jnp.asarray(LENGTHS), initial_carry=h0,
                         reverse=True, engine=engine)
    return jnp.sum(ys * w) + jnp.sum(jnp.abs(carry) ** 2)

  grad = jit(jax.grad(loss, argnums=(0, 1, 2)), static_argnums=3)
  seq, par = grad(params, xs, h0, 'sequential'), grad(params, xs, h0, 'associative')
  for leaf_par, leaf_seq in zip(jax.tree.leaves(par), jax.tree.leaves(seq)):
    assert rel_err(leaf_par, leaf_seq) < 1e-5
  assert float(jnp.max(jnp.abs(seq[0]['kernel']))) > 0


# --- Engine choice and errors -------------------------------------------------------------


def test_input_size_mismatch_is_named():
  cell, params, _ = make('lru')
  with pytest.raises(ValueError, match=f'inputs have 7 features but the layer was built for {IN}'):
    scan.run(cell, params, jnp.zeros((BATCH, TIME, 7)))


# --- LRU initialisation and use in a model ----------------------------------------------

@pytest.mark.parametrize('options', [{}, {'r_min': 0.0, 'r_max': 1.0},
                                     {'r_min': 0.5, 'r_max': 0.9, 'max_phase': np.pi / 10}])
def test_lru_ring_init(options):
  cell = cells.make_cell('lru', 4, state_size=2048, **options)
  params = jit(cell.init, static_argnums=1)(jax.random.key(0), 3)
  p = {k: np.asarray(v, np.float64) for k, v in params.items()}
  radius = np.exp(-np.exp(p['nu_log']))
  phase = np.exp(p['theta_log'])
  tol = 1e-6
  assert np.all(radius >= cell.r_min - tol) and np.all(radius <= cell.r_max + tol)
  assert np.all(phase >= 0) and np.all(phase <= cell.max_phase + tol)
  np.testing.assert_allclose(np.exp(p['gamma_log']), np.sqrt(1 - radius ** 2), rtol=1e-4)
  # r^2 is uniform on [r_min^2, r_max^2]: its mean is the interval's midpoint
  assert abs(np.mean(radius ** 2) - (cell.r_min ** 2 + cell.r_max ** 2) / 2) < 0.02


@pytest.mark.parametrize('engine', ['sequential', 'associative'])
def test_lru_bfloat16_keeps_lambda_float32(engine):
  """Under a bfloat16 compute dtype the eigenvalue parameters stay float32 (rounded,
  lambda's phase is off by ~0.01 rad a step and the error grows with time): the last
  64 of 512 steps stay as close to float32 as the first 64."""
  cell = cells.make_cell('lru', 16)
  params = cell.init(jax.random.key(0), 8)
  kept = scan.cast_params(cell, params, jnp.bfloat16)
  assert {k for k, v in kept.items() if v.dtype == jnp.float32} == set(cell.float32_params)
  xs = jax.random.normal(jax.random.key(1), (2, 512, 8))
  _, y32 = scan.run(cell, params, xs, engine=engine)
  _, y16 = scan.run(cell, params, xs, engine=engine, dtype=jnp.bfloat16)
  rel = lambda a, b: float(jnp.linalg.norm(a - b) / jnp.linalg.norm(b))
  first, last = rel(y16[:, :64], y32[:, :64]), rel(y16[:, -64:], y32[:, -64:])
  assert first < 0.01 and last < 0.01, (first, last)


def test_lru_rejects_bad_ring():
  with pytest.raises(ValueError, match='r_min < r_max'):
    cells.make_cell('lru', 4, r_min=0.9, r_max=0.5)


def test_lru_classifier_pools_the_state():
  model = sequence.SequenceModel(
      encoder=layers.StackedRNN(cell='lru', hidden_size=HIDDEN, bidirectional=True,
                                scan=scan.ScanOptions(engine='sequential')),
      num_outputs=2, pool='last')
  xs = make('lru')[2][:, :4]
  lengths = jnp.asarray([4, 2, 1])
  params = jit(model.init)(jax.random.key(0), xs, lengths)
  out, (carry,) = jit(model.apply)(params, xs, lengths)
  assert out.shape == (BATCH, 2) and np.all(np.isfinite(np.asarray(out)))
  assert cells.make_cell('lru', HIDDEN).output(carry[0]).shape == (BATCH, 2 * HIDDEN)

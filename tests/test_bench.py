"""``python -m seqlab.bench``: the quick run ends, and its JSON holds every implementation."""
import json
import math

import jax
from jax.extend import core as jax_core
import numpy as np
import optax
import pytest

from conftest import run_module
from seqlab import bench
from seqlab import cells
from seqlab import scan

IMPLS = {'seqlab hoist=on', 'seqlab hoist=off', 'flax', 'torch'}


def test_quick_run_writes_json(tmp_path):
  pytest.importorskip('torch')
  out = tmp_path / 'bench.json'
  proc = run_module('seqlab.bench', '--quick', '--json', str(out))
  assert proc.returncode == 0, proc.stderr[-3000:]
  result = json.loads(out.read_text())
  assert result['machine']['cores'] >= 1
  assert result['machine']['jax_backend'] and result['machine']['versions']['jax']
  rows = result['speed']
  fused = {(c, 'seqlab autodiff') for c in bench.CELLS if scan.default_fuse(cells.make_cell(c, 4))}
  assert {(r['cell'], r['impl']) for r in rows} == {(c, i) for c in bench.CELLS for i in IMPLS} | fused
  assert len(fused) == (len(bench.CELLS) if jax.default_backend() in ('cpu', 'gpu') else 0)
  for row in rows:
    assert row['tokens_per_sec'] > 0, row
    assert row['ratio_vs_torch'] > 0 and row['ratio_vs_flax'] > 0, row
    assert row['impl'] == 'torch' or row['compile_s'] > 0, row
    assert row['matmul_flops_per_sec'] > 0 and row['of_dense'] > 0, row
  assert '| tokens/s |' in proc.stdout


def test_dtype_with_memory_or_crossover_is_refused():
  """--memory and --crossover measure float32 only: another --dtype is an error, not a
  JSON that records a dtype nothing ran in."""
  proc = run_module('seqlab.bench', '--quick', '--memory', '--dtype', 'bfloat16')
  assert proc.returncode != 0 and '--dtype applies to the speed table only' in proc.stderr
  assert 'Traceback' not in proc.stderr


def test_memory_and_crossover_quick(tmp_path):
  out = tmp_path / 'memory.json'
  proc = run_module('seqlab.bench', '--quick', '--memory', '--crossover', '--cells', 'lstm',
                    '--json', str(out))
  assert proc.returncode == 0, proc.stderr[-3000:]
  result = json.loads(out.read_text())
  rows = result['memory']
  assert {(r['time'], r['remat'], r['hoist']) for r in rows} == {
      (t, k, h) for t, k in ((64, 0), (64, 8), (256, 0), (256, 16)) for h in (True, False)}
  assert all(r['temp_bytes'] > 0 for r in rows)
  assert all(0 <= r['workspace_bytes'] < r['temp_bytes'] for r in rows)
  if jax.default_backend() == 'cpu':  # XLA:CPU's dots need no scratch; a GPU's cuBLAS does
    assert all(r['workspace_bytes'] == 0 for r in rows)
  assert all(r['temp_bytes_per_step'] == (r['temp_bytes'] - r['workspace_bytes']) / r['time']
             for r in rows)
  remat = {(r['time'], r['hoist']): r['temp_bytes'] for r in rows if r['remat']}
  assert all(remat[r['time'], r['hoist']] < r['temp_bytes'] for r in rows if not r['remat'])
  crossover = result['crossover']
  assert crossover and all(r['tokens_per_sec'] > 0 for r in crossover)


@pytest.mark.parametrize('backend, rows', [
    ('cpu', [('seqlab hoist=on', True, None), ('seqlab hoist=off', False, None),
             ('seqlab autodiff', False, False)]),
    ('gpu', [('seqlab hoist=on', True, None), ('seqlab hoist=off', False, None),
             ('seqlab autodiff', True, False)]),
    ('tpu', [('seqlab hoist=on', True, None), ('seqlab hoist=off', False, None),
             ('seqlab fused hoist=on', True, True), ('seqlab fused hoist=off', False, True)]),
])
def test_variants_measure_the_engine_that_is_not_the_default(monkeypatch, backend, rows):
  """Per backend the bench adds the other engine, with that backend's default hoisting,
  so that every default in scan.py stands against its alternative in one run; the
  accelerator shapes and dense size follow the backend, and PyTorch stays on the CPU
  unless JAX runs on a GPU that torch sees too."""
  monkeypatch.setattr(jax, 'default_backend', lambda: backend)
  assert bench.seqlab_variants('lstm') == rows
  assert bench.seqlab_variants('mingru') == rows[:2]  # not fusable: the defaults only
  assert bench.dense_size() == (bench.DENSE_N if backend == 'cpu' else bench.DENSE_N_ACCELERATOR)
  torch = pytest.importorskip('torch')
  cuda = backend == 'gpu' and torch.cuda.is_available()
  assert bench.torch_device(torch) == ('cuda' if cuda else 'cpu')
  info = bench.accelerator(torch)
  assert (info is None) == (backend == 'cpu')
  if info is not None:
    assert info['device_kind'] and ('cudnn' in info) == cuda


@pytest.mark.parametrize('text, shape', [('32x128x256', bench.Shape(32, 128, 256)),
                                         ('8X1024x256', bench.Shape(8, 1024, 256))])
def test_shape_parse(text, shape):
  assert bench.Shape.parse(text) == shape and str(bench.Shape.parse(str(shape))) == str(shape)


@pytest.mark.parametrize('text', ['32x128', 'axbxc', ''])
def test_shape_parse_rejects(text):
  with pytest.raises(ValueError, match='batch x time x hidden'):
    bench.Shape.parse(text)


def test_ratios_against_peers():
  impls = [bench.Impl('seqlab hoist=on', None, 1.0, [0.5, 0.5, 2.0]),
           bench.Impl('flax', None, 1.0, [1.0]), bench.Impl('torch', None, None, [2.0])]
  dense_rate = bench.dense_rate(bench.Impl('dense matmul', None, 1.0, [4.0, 1.0, 1.0]))
  rows = bench.speed_rows('lstm', bench.Shape(2, 5, 3), impls, input_size=4,
                          dense_flops_per_sec=dense_rate)
  assert [r['impl'] for r in rows] == ['seqlab hoist=on', 'flax', 'torch']
  assert [r['tokens_per_sec'] for r in rows] == [20.0, 10.0, 5.0]  # 10 tokens / median
  assert [r['ratio_vs_torch'] for r in rows] == [4.0, 2.0, 1.0]
  assert [r['ratio_vs_flax'] for r in rows] == [2.0, 1.0, 0.5]
  dense = 2 * bench.dense_size()**3  # FLOP/s at its median step time of 1 s
  flops = bench.step_matmul_flops('lstm', bench.Shape(2, 5, 3), 4)
  assert [r['of_dense'] for r in rows] == pytest.approx([flops * 2 / dense, flops / dense,
                                                         flops / 2 / dense])
  no_formula = bench.speed_rows('mingru', bench.Shape(2, 5, 3), impls, 4, dense_rate)
  assert no_formula[0]['of_dense'] is None
  assert bench.speed_rows('lstm', bench.Shape(2, 5, 3), impls, 4)[0]['of_dense'] is None


def dot_flops(jaxpr) -> int:
  """FLOPs of every dot_general in ``jaxpr``, a scan's body counted once per step."""
  total = 0
  for eqn in jaxpr.eqns:
    if eqn.primitive.name == 'dot_general':
      (contracting, _), _ = eqn.params['dimension_numbers']
      lhs = eqn.invars[0].aval.shape
      total += 2 * math.prod(eqn.outvars[0].aval.shape) * math.prod(lhs[d] for d in contracting)
      continue
    steps = eqn.params['length'] if eqn.primitive.name == 'scan' else 1
    for value in eqn.params.values():
      for sub in value if isinstance(value, (tuple, list)) else (value,):
        if isinstance(sub, jax_core.ClosedJaxpr):
          sub = sub.jaxpr
        if isinstance(sub, jax_core.Jaxpr):
          total += steps * dot_flops(sub)
  return total


@pytest.mark.usefixtures('cpu_backend')  # counts ' dot(' in XLA:CPU's HLO, at its unroll 1
@pytest.mark.parametrize('cell', bench.CELLS)
def test_step_matmul_flops_counts_the_dots_of_the_training_step(cell):
  """The formula against the dots traced in Flax's and seqlab's (autodiff) training
  steps; seqlab's ``scan.fused`` step, whose VJP traces the inputs' gradient and the
  primal halves of its after-loop VJPs for XLA to drop, compiles to as many dots."""
  shape, input_size = bench.Shape(2, 5, 3), 4
  xs, targets = bench.data(shape, input_size)
  optimizer = optax.adam(1e-3)

  def step_and_args(model):
    params = model.init(jax.random.key(0), xs[:1])
    return bench.mse_train_step(model.apply, optimizer), (params, optimizer.init(params), xs, targets)
  options = lambda fuse: scan.ScanOptions(hoist=False, fuse=fuse)
  autodiff = bench.SeqlabModel(cell, shape.hidden, options(False))
  for model in (bench.FlaxModel(cell, shape.hidden), autodiff):
    step, args = step_and_args(model)
    assert dot_flops(jax.make_jaxpr(step)(*args).jaxpr) == bench.step_matmul_flops(cell, shape, input_size), model
  def compiled_dots(model):
    step, args = step_and_args(model)
    return jax.jit(step).lower(*args).compile().as_text().count(' dot(')
  assert compiled_dots(bench.SeqlabModel(cell, shape.hidden, options(True))) == compiled_dots(autodiff)


@pytest.mark.parametrize('time, k', [(1, 1), (99, 9), (100, 10), (10_000, 100)])
def test_remat_chunk_is_about_sqrt_time(time, k):
  assert bench.remat_chunk(time) == k


def test_varlen_rows_count_valid_tokens_of_the_same_examples():
  """--varlen: every row trains on the same examples (each once per epoch, padded or in
  buckets), buckets scan less padding, and packed PyTorch scans none."""
  torch = bench.torch_module()
  shape = bench.Shape(4, 16, 8)
  lengths = bench.varlen_lengths('lognormal', shape, 8 * shape.batch)
  assert lengths.max() == 16 and lengths.min() >= 1
  for buckets in (0, 2):
    epoch = bench.varlen_batches(lengths, shape.batch, buckets)
    seen = np.zeros(len(lengths))
    for rows, weights, t in epoch:
      np.add.at(seen, rows, weights)
      assert lengths[rows].max() <= t
    np.testing.assert_array_equal(seen, np.ones(len(lengths)))
  rows = bench.run_varlen(['lognormal'], ['lstm'], [shape], 3, 1, 2, [2], ['flax', 'torch'],
                          torch)
  by_impl = {r['impl']: r for r in rows}
  want = {'seqlab padded', 'seqlab buckets=2', 'flax seq_lengths'}
  assert set(by_impl) == want | ({'torch packed', 'torch padded'} if torch else set())
  assert by_impl['seqlab buckets=2']['padding'] < by_impl['seqlab padded']['padding']
  assert by_impl['flax seq_lengths']['padding'] == by_impl['seqlab padded']['padding'] > 0
  assert all(r['valid_tokens_per_sec'] > 0 for r in rows)
  if torch:
    assert by_impl['torch packed']['padding'] == 0


def test_engines_rows_time_every_engine_with_newtons_counts():
  """``run_engines`` (``bench --engines``) on a small GRU: a row per engine that runs it
  (the associative engine is n/a for a GRU), each timed, Newton's rows with their
  iteration and fallback counts, the sequential row 1.00 against itself; the table
  prints every row."""
  rows = bench.run_engines(['gru'], [bench.Shape.parse('2x16x4')], input_size=3, steps=1,
                           rounds=2)
  assert [r['impl'] for r in rows] == ['sequential', 'newton dense', 'newton diagonal',
                                       'newton diagonal, assoc. adjoint',
                                       'newton diagonal, damped 1']
  assert all(r['step_s'] > 0 and r['compile_s'] > 0 for r in rows)
  assert rows[0]['vs_sequential'] == 1.0 and 'newton_iterations' not in rows[0]
  for r in rows[1:]:
    assert 1 <= r['newton_iterations'] <= 32 and r['newton_fallbacks'] == 0
  assert bench.format_table(rows, bench.ENGINES_COLUMNS).count('\n| gru |') == len(rows)

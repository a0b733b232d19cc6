"""Population (vmap) training: equal to separate runs, resumable, sharded over devices."""
import json
import os
import signal

import jax
import numpy as np
import pytest

from seqlab import checkpoint
from seqlab import losses
from seqlab import population
from seqlab import tasks
from seqlab import train
from seqlab import workdir as workdir_lib
from conftest import cpu_env, load_config, run_module

TIMING_KEYS = ('step_time', 'tokens_per_sec')


def _config(steps=40, **overrides):
  config = load_config('adding')
  config.train.steps = steps
  for key, value in overrides.items():
    section, _, name = key.rpartition('__')
    (config[section] if section else config)[name] = value
  return config


def _assert_rows_close(a_dir, b_dir, rtol=1e-4, skip_a=lambda row: False):
  a, b = workdir_lib.read_metrics(a_dir), workdir_lib.read_metrics(b_dir)
  a = [r for r in a if not skip_a(r)]
  assert [(r['step'], r['split']) for r in a] == [(r['step'], r['split']) for r in b]
  for ra, rb in zip(a, b):
    for key in set(ra) - {'step', 'split', *TIMING_KEYS}:
      want = rb[key] if isinstance(rb[key], str) else pytest.approx(rb[key], rel=rtol, abs=1e-7)
      assert ra[key] == want, (a_dir, ra['step'], key)


def test_signature_separates_only_what_changes_the_program():
  base = _config()
  same = [_config(seed=3), _config(optim__lr=0.1), _config(optim__clip_norm=0.3),
          _config(model__forget_bias=0.0), _config(model__kernel_init='he_normal')]
  other = [_config(model__hidden_size=8), _config(model__dropout=0.1),
           _config(optim__clip_norm=0.0), _config(optim__weight_decay=1e-4),
           _config(optim__name='sgd'), _config(steps=41)]
  assert {population.signature(c) for c in [base, *same]} == {population.signature(base)}
  assert len({population.signature(c) for c in [base, *other]}) == 1 + len(other)
  assert population.partition([base, other[0], same[0], other[0]]) == [[0, 2], [1, 3]]
  assert population.split_reasons([base, other[0]]) == ['model.hidden_size']


def test_population_equals_separate_runs_resumes_and_survives_a_diverging_point(tmp_path):
  points = [dict(optim__lr=1e-3, seed=0), dict(optim__lr=3e-3, seed=1, optim__clip_norm=0.5),
            dict(optim__lr=1e-2, seed=2, model__forget_bias=0.0),
            dict(optim__lr=1e38, seed=0)]  # diverges at step 2
  pop_dirs = [str(tmp_path / f'pop{i}') for i in range(len(points))]
  # Two legs: 20 steps, then 40 steps resumes every point from its checkpoint; the
  # diverged point has none, so it trains apart, from step 0 (and diverges again).
  first = population.train_population([_config(20, **p) for p in points], pop_dirs)
  assert 'not finite at step 2' in first[3] and 'checkpoint (none)' in first[3]
  assert not os.listdir(os.path.join(pop_dirs[3], 'checkpoints'))
  assert all(isinstance(r, dict) for r in first[:3])  # the others went on
  results = population.train_population([_config(40, **p) for p in points], pop_dirs)
  assert 'not finite at step 2' in results[3]

  for i, p in enumerate(points[:3]):
    config = _config(40, **p)
    sep_dir = str(tmp_path / f'sep{i}')
    separate = train.train_and_evaluate(config, sep_dir)
    for key, value in separate.items():
      assert results[i][key] == pytest.approx(value, rel=1e-4), key
    # The first leg's end read the test split at step 20; the separate run's end, at 40.
    _assert_rows_close(pop_dirs[i], sep_dir,
                       skip_a=lambda r: r['split'] == 'test' and r['step'] == 20)
    for name in ('config.json',):
      assert (json.load(open(os.path.join(pop_dirs[i], name)))
              == json.load(open(os.path.join(sep_dir, name))))
    assert os.listdir(os.path.join(pop_dirs[i], 'best')) == os.listdir(
        os.path.join(sep_dir, 'best'))
    # A normal run's layout: load_run (what seqlab.evaluate uses) reads both.
    for which in ('latest', 'best'):
      _, _, _, a, step_a = train.load_run(pop_dirs[i], which)
      _, _, _, b, step_b = train.load_run(sep_dir, which)
      assert step_a == step_b
      for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-4, atol=1e-6)


def test_population_sharded_over_two_devices_matches_one(tmp_path):
  """The population axis split over two (CPU) devices trains as on one."""
  args = ['--config', 'experiments/adding.py:quick', '--mode', 'vmap',
          '--sweep', 'optim.lr=[0.001,0.003]', '--sweep', 'seed=[0,1]']
  two = run_module('seqlab.sweep', *args, '--workdir', str(tmp_path / 'two'), env=cpu_env(2))
  assert two.returncode == 0, two.stderr
  assert 'population axis split over 2 devices' in two.stderr
  one = run_module('seqlab.sweep', *args, '--workdir', str(tmp_path / 'one'), env=cpu_env())
  assert one.returncode == 0, one.stderr
  assert 'split over' not in one.stderr
  for name in [f'optim.lr={lr!r},seed={seed}' for lr in (1e-3, 3e-3) for seed in (0, 1)]:
    info = json.load(open(tmp_path / 'two' / name / 'run_info.json'))
    assert len(info['devices']) == 2
    _assert_rows_close(str(tmp_path / 'two' / name), str(tmp_path / 'one' / name))
    evals = [r for r in workdir_lib.read_metrics(str(tmp_path / 'one' / name))
             if r['split'] == 'eval']
    assert evals and evals[-1]['mse'] > 0
  # The 2-device checkpoints resume on 1 device (they once failed to load there, and
  # the points silently started again from step 0).
  more = run_module('seqlab.sweep', *args, '--workdir', str(tmp_path / 'two'),
                    '--config.train.steps=50', env=cpu_env())
  assert more.returncode == 0, more.stderr[-3000:]
  assert 'Population of 4 points resumed at step 40' in more.stderr, more.stderr[-3000:]


def _checkpoint_steps(workdir):
  return sorted(int(d) for d in os.listdir(os.path.join(workdir, 'checkpoints')) if d.isdigit())


def test_one_signal_stops_every_sub_population(tmp_path, monkeypatch):
  """Points found at different steps train as sub-populations, one after another. A
  SIGTERM during the first saves it and starts no other: one signal stops a vmapped
  sweep, as it stops a process sweep. (The next one once trained to the end.)"""
  dirs = [str(tmp_path / 'a'), str(tmp_path / 'b')]
  population.train_population([_config(20)], dirs[:1])  # a: a checkpoint at step 20
  calls = []
  def then_signal(stack):
    def stack_then_signal(self, xs):  # the 8th call is a batch inside the first loop
      calls.append(1)
      if len(calls) == 8:
        os.kill(os.getpid(), signal.SIGTERM)
      return stack(self, xs)
    return stack_then_signal
  for axis in (train.One, train.Stacked):  # a group of one point is not vmapped
    monkeypatch.setattr(axis, 'stack', then_signal(axis.stack))
  results = population.train_population([_config(2000), _config(2000, seed=1)], dirs)
  assert results == [None, None]  # both to resume
  assert _checkpoint_steps(dirs[0]) == [20]  # not started again
  assert 0 < _checkpoint_steps(dirs[1])[-1] < 2000  # b, from 0, saved where it stopped


def test_a_seq2seq_population_logs_the_decoded_metrics(tmp_path):
  """A vmapped seq2seq point logs what its own run logs, ``decode_*`` included, and can
  rank its best checkpoint by one of them."""
  configs = []
  for seed in (0, 1):
    config = load_config('reverse')
    config.seed, config.train.best_metric = seed, 'decode_token_error_rate'
    configs.append(config)
  dirs = [str(tmp_path / f'p{seed}') for seed in (0, 1)]
  results = population.train_population(configs, dirs)
  spec = tasks.make_task(configs[0].task, 0).spec
  for workdir, result in zip(dirs, results):
    evals = [r for r in workdir_lib.read_metrics(workdir) if r['split'] == 'eval']
    assert evals and all(set(r) - {'step', 'split', 'count'} == set(losses.eval_metrics(spec))
                         for r in evals)
    assert 0 <= result['decode_exact_match'] <= 1
    best = min(evals, key=lambda r: (r['decode_token_error_rate'], r['step']))['step']
    assert os.listdir(os.path.join(workdir, 'best')) == [str(best)]


def test_a_population_refuses_a_busy_workdir(tmp_path):
  """As ``seqlab.run``: a point whose workdir another run holds is not trained."""
  configs = [load_config('adding') for _ in range(2)]
  for seed, c in enumerate(configs):
    c.seed, c.train.steps = seed, 4
  dirs = [str(tmp_path / 'a'), str(tmp_path / 'b')]
  with workdir_lib.lock(dirs[0]):
    with pytest.raises(workdir_lib.WorkdirError, match='is in use by a run'):
      population.train_population(configs, dirs)
  assert not os.path.exists(os.path.join(dirs[0], 'metrics.jsonl'))
  assert population.train_population(configs, dirs)[0]  # free again: it trains


# --- One loop: seqlab.run and a vmapped sweep are the same loop -------------------------


def _files(directory) -> dict:
  """{relative path: bytes} of a workdir's files, less the ones written on every open."""
  return {str(p.relative_to(directory)): p.read_bytes() for p in directory.rglob('*')
          if p.is_file() and 'events' not in p.name and p.name not in ('.lock', 'point.json',
                                                                        'run_info.json')}


def test_a_point_of_a_vmapped_sweep_trains_as_seqlab_run_does(tmp_path):
  """The same point through ``python -m seqlab.run`` and as one member of a
  ``--mode=vmap`` sweep: the same metrics rows (steps, splits, keys; values within float
  tolerance) and the same checkpoint steps. Rerun on the finished workdirs, neither
  appends anything; both report the logged final eval."""
  args = ('--config', 'experiments/adding.py:quick')
  run_dir, sweep_dir = tmp_path / 'run', tmp_path / 'sweep'
  single = run_module('seqlab.run', *args, '--workdir', str(run_dir), env=cpu_env())
  assert single.returncode == 0, single.stderr[-3000:]
  swept = run_module('seqlab.sweep', *args, '--workdir', str(sweep_dir), '--mode=vmap',
                     '--sweep', 'seed=[0,1]', env=cpu_env())
  assert swept.returncode == 0, swept.stderr[-3000:]
  assert 'Population of 2 points' in swept.stderr
  point = sweep_dir / 'seed=0'
  _assert_rows_close(str(point), str(run_dir))
  a, b = workdir_lib.read_metrics(str(point)), workdir_lib.read_metrics(str(run_dir))
  assert [set(r) for r in a] == [set(r) for r in b]
  for sub in ('checkpoints', 'best'):
    assert sorted(os.listdir(point / sub)) == sorted(os.listdir(run_dir / sub)), sub
  assert (point / 'learning_curves.png').exists() == (run_dir / 'learning_curves.png').exists()

  # Rerun: the run prints the logged final eval, the population returns it; no file changes.
  before = {d: _files(d) for d in (run_dir, point, sweep_dir / 'seed=1')}
  again = run_module('seqlab.run', *args, '--workdir', str(run_dir), env=cpu_env())
  assert again.returncode == 0, again.stderr[-3000:]
  final = [r for r in workdir_lib.read_metrics(str(run_dir)) if r['split'] == 'eval'][-1]
  assert f"final eval: loss={final['loss']:.5g}" in again.stdout
  configs = [_config(seed=s) for s in (0, 1)]
  results = population.train_population(configs, [str(point), str(sweep_dir / 'seed=1')])
  final = [r for r in workdir_lib.read_metrics(str(point)) if r['split'] == 'eval'][-1]
  assert results[0] == {k: v for k, v in final.items() if k not in ('step', 'split')}
  assert {d: _files(d) for d in before} == before


def test_checkpoints_that_do_not_restore_are_refused_in_both_paths(tmp_path):
  """Every checkpoint unreadable (same config): seqlab.run and a population both refuse
  to start over them, naming the fix, and keep them."""
  dirs = [tmp_path / 'a', tmp_path / 'b']
  config = _config(20)
  population.train_population([config, _config(20, seed=1)], [str(d) for d in dirs])
  for d in dirs:
    for p in (d / 'checkpoints').rglob('*'):
      if p.is_file():
        p.write_bytes(b'')
  before = [_files(d) for d in dirs]
  with pytest.raises(workdir_lib.WorkdirError, match='no checkpoint in .* restores'):
    train.train_and_evaluate(_config(40), str(dirs[0]))
  with pytest.raises(workdir_lib.WorkdirError, match='no checkpoint in .* restores'):
    population.train_population([_config(40), _config(40, seed=1)], [str(d) for d in dirs])
  assert [_files(d) for d in dirs] == before


def test_an_unwritable_checkpoint_directory_fails_before_training_in_both_paths(
    tmp_path, monkeypatch):
  def refuse(*args, **kwargs):
    raise PermissionError(13, 'Permission denied', kwargs.get('dir'))
  monkeypatch.setattr(checkpoint.tempfile, 'TemporaryFile', refuse)
  dirs = [str(tmp_path / 'a'), str(tmp_path / 'b')]
  with pytest.raises(checkpoint.CheckpointWriteError, match='cannot write checkpoints'):
    train.train_and_evaluate(_config(), dirs[0])
  with pytest.raises(checkpoint.CheckpointWriteError, match='cannot write checkpoints'):
    population.train_population([_config(), _config(seed=1)], dirs)
  for d in dirs:
    assert not os.path.exists(os.path.join(d, 'metrics.jsonl'))


def test_a_population_with_length_buckets_equals_separate_runs(tmp_path):
  """Under train.length_buckets every step's padded length is the same for any seed, so
  points of different seeds stack, each reading its own examples as its run does."""
  configs = []
  for seed in (0, 1):
    config = load_config('japanese_vowels')
    config.seed, config.model.bidirectional, config.model.hidden_size = seed, False, 4
    config.train.length_buckets, config.train.steps = 2, 8
    configs.append(config)
  pop_dirs = [str(tmp_path / f'pop{i}') for i in range(2)]
  results = population.train_population(configs, pop_dirs)
  for i, config in enumerate(configs):
    separate = train.train_and_evaluate(config, str(tmp_path / f'sep{i}'))
    for key, value in separate.items():
      assert results[i][key] == pytest.approx(value, rel=1e-4), key
    _assert_rows_close(pop_dirs[i], str(tmp_path / f'sep{i}'))

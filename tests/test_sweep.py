"""Sweeps: point declaration, --sweep parsing, checks, shards, process mode end to end."""
import io
import json
import math
import os

import numpy as np
import pytest

from seqlab import sweep
from seqlab import workdir as workdir_lib
from conftest import load_config, run_module, signal_when

QUICK = ['--config', 'experiments/adding.py:quick']


# --- Declaring points -------------------------------------------------------------------


def test_grid_is_the_product_with_the_last_key_fastest():
  points = sweep.grid({'optim.lr': [1e-3, 3e-3], 'seed': [0, 1, 2]})
  assert len(points) == 6
  assert points[:3] == [{'optim.lr': 1e-3, 'seed': s} for s in (0, 1, 2)]
  assert sweep.product(sweep.grid({'optim.lr': [1e-3, 3e-3]}),
                       sweep.grid({'seed': [0, 1, 2]})) == points
  assert sweep.grid({'seed': []}) == [] and sweep.grid({}) == [{}]
  with pytest.raises(sweep.SweepError, match='seed is set by two'):
    sweep.product(sweep.grid({'seed': [0]}), sweep.grid({'seed': [1]}))
  with pytest.raises(sweep.SweepError, match='needs a list'):
    sweep.grid({'model.cell': 'lstm'})


def test_random_draws_are_reproducible_and_log_uniform():
  axes = {'optim.lr': sweep.log_uniform(1e-4, 1e-1), 'model.dropout': sweep.uniform(0.0, 0.5),
          'model.cell': ['lstm', 'gru']}
  a, b = sweep.random(2000, axes, seed=3), sweep.random(2000, axes, seed=3)
  assert a == b and a != sweep.random(2000, axes, seed=4)
  lr = np.array([p['optim.lr'] for p in a])
  assert lr.min() >= 1e-4 and lr.max() <= 1e-1
  # Log-uniform: half the draws below the geometric mean, a third in each decade.
  assert abs(np.mean(lr < math.sqrt(1e-4 * 1e-1)) - 0.5) < 0.05
  assert abs(np.mean(lr < 1e-3) - 1 / 3) < 0.05
  dropout = np.array([p['model.dropout'] for p in a])
  assert 0 <= dropout.min() and dropout.max() <= 0.5 and abs(dropout.mean() - 0.25) < 0.02
  assert {p['model.cell'] for p in a} == {'lstm', 'gru'}
  assert all(float(f'{v:.4g}') == v for v in lr)  # rounded: readable names


@pytest.mark.parametrize('text,key,values', [
    ('optim.lr=[0.001,0.003]', 'optim.lr', [0.001, 0.003]),
    ('seed=[0, 1, 2]', 'seed', [0, 1, 2]),
    ('model.cell=[lstm,gru]', 'model.cell', ['lstm', 'gru']),
    ("model.cell=['lstm', 'gru']", 'model.cell', ['lstm', 'gru']),
    ('optim.boundaries=[(0.3,0.6),(0.5,0.75)]', 'optim.boundaries', [(0.3, 0.6), (0.5, 0.75)]),
    ('optim.lr=[1e-3]', 'optim.lr', [1e-3]),
    ('seed=3', 'seed', [3]),
    ('seed=[]', 'seed', []),
])
def test_parse_sweep_arg(text, key, values):
  assert sweep.parse_sweep_arg(text) == (key, values)


def test_cli_points_grid_and_errors():
  points = sweep.cli_points(['optim.lr=[0.001,0.003]', 'seed=[0,1,2]'])
  assert points == sweep.grid({'optim.lr': [0.001, 0.003], 'seed': [0, 1, 2]})
  for bad in (['seed'], ['=[1]'], ['seed=']):
    with pytest.raises(sweep.SweepError, match='expected key='):
      sweep.cli_points(bad)
  with pytest.raises(sweep.SweepError, match='names seed twice'):
    sweep.cli_points(['seed=[0]', 'seed=[1]'])


# --- Checking points ----------------------------------------------------------------------


def test_check_points_converts_names_and_validates(tmp_path):
  config = load_config('adding')
  points = sweep.check_points(config, [{'seed': 1, 'optim.lr': 1}, {'model.cell': 'gru'}],
                              str(tmp_path), 'adding')
  assert points[0].overrides == {'seed': 1, 'optim.lr': 1.0}  # int -> the config's float
  assert points[0].name == 'optim.lr=1.0,seed=1'  # keys sorted, stable
  assert points[0].config.optim.lr == 1.0 and points[0].config.seed == 1
  assert points[1].config.model.cell == 'gru' and config.model.cell == 'lstm'  # a copy
  assert points[1].workdir == os.path.join(str(tmp_path), 'model.cell=gru')
  cases = [
      ([{'optim.lrr': 1.0}], 'optim.lrr is not a key of the config of adding; keys under '
                             'optim: b1, b2'),
      ([{'task.lenght': 3}], 'task.lenght is not a key'),
      ([{'optim': 1}], 'optim is a section of the config'),
      ([{'model.cell': 3}], 'model.cell=3 has type int; the config holds a str'),
      ([{'seed': 0.5}], 'seed=0.5 has type float'),
      ([{'model.bidirectional': 1}], 'model.bidirectional=1 has type int'),
      ([], 'zero points'),
      ([{'seed': 1}, {'seed': 1}], r'point 1 \(seed=1\) repeats point 0'),
      ([{'optim.lr': -1.0}], 'point optim.lr=-1.0: config.optim.lr must be positive'),
      ([{'model.cell': 'lstmm'}], 'choose one of'),
      ([{'task.length': 1}], 'point task.length=1: task.length must be an integer >= 2'),
      ([{'optim.b1': 2.0}], 'optim.b1=2.0 must be < 1'),
  ]
  for raw, message in cases:
    with pytest.raises(sweep.SweepError, match=message):
      sweep.check_points(config, raw, str(tmp_path), 'adding')
  assert not os.listdir(tmp_path)  # checking creates nothing


def test_point_names_are_filesystem_safe_and_short():
  assert sweep.point_name({}) == 'base'
  assert sweep.point_name({'task.path': 'a/b c'}) == 'task.path=a_b_c'
  assert sweep.point_name({'optim.boundaries': (0.3, 0.6)}) == 'optim.boundaries=(0.3,0.6)'
  long = {f'k{i}': 'x' * 20 for i in range(10)}
  name = sweep.point_name(long)
  assert len(name) <= 120 and name == sweep.point_name(dict(reversed(long.items())))
  assert name != sweep.point_name({**long, 'k9': 'y' * 20})


def test_check_unchanged_refuses_a_point_run_with_another_config(tmp_path):
  """A point's name holds only its swept keys: a sub-workdir whose config.json differs
  in anything else (other shared overrides, an edited experiment) holds another run."""
  config = load_config('adding')
  [point] = sweep.check_points(config, [{'seed': 0}], str(tmp_path), 'adding')
  sweep.check_unchanged([point])  # not started: nothing to compare
  os.makedirs(point.workdir)

  def save(**changes):
    saved = json.loads(point.config.to_json_best_effort())
    for key, value in changes.items():
      section, name = key.split('__')
      saved[section][name] = value
    (tmp_path / point.name / 'config.json').write_text(json.dumps(saved))

  save(train__steps=7, train__eval_every=3)  # a rerun may add steps, change the cadence
  sweep.check_unchanged([point])
  save(model__cell='gru', model__hidden_size=8, train__steps=7)
  with pytest.raises(sweep.SweepError, match=(
      r"point seed=0 was run with another config \(model.cell: 'gru' -> 'lstm'; "
      r'model.hidden_size: 8 -> 16\); give another --workdir, or delete .*seed=0 to rerun')):
    sweep.check_unchanged([point])
  save(**{f'optim__{k}': 0.5 for k in ('b1', 'b2', 'eps', 'lr')})
  with pytest.raises(sweep.SweepError, match=r'optim.eps: 0.5 -> 1e-08 and 1 more\)'):
    sweep.check_unchanged([point])


@pytest.mark.parametrize('count', [1, 2, 3, 7])
def test_shards_partition_the_points(count):
  points = list(range(20))
  shards = [sweep.shard(points, i, count) for i in range(count)]
  assert sorted(p for s in shards for p in s) == points  # complete and disjoint
  assert sweep.parse_shard(f'{count - 1}/{count}') == (count - 1, count)
  for bad in (f'{count}/{count}', '1', 'a/b', '-1/2', ''):
    with pytest.raises(sweep.SweepError, match='expected i/n'):
      sweep.parse_shard(bad)


def test_vmap_plan_falls_back_for_shape_changing_keys(tmp_path):
  config = load_config('adding')
  check = lambda raw: sweep.check_points(config, raw, str(tmp_path), 'adding')
  together, alone, message = sweep.plan_vmap(check(sweep.grid(
      {'optim.lr': [1e-3, 1e-2], 'seed': [0, 1], 'optim.clip_norm': [0.5, 1.0]})))
  assert [len(g) for g in together] == [8] and not alone and message is None
  together, alone, message = sweep.plan_vmap(check(sweep.grid(
      {'model.hidden_size': [8, 16], 'model.dropout': [0.0, 0.1]})))
  assert not together and len(alone) == 4
  assert 'model.dropout, model.hidden_size' in message
  assert '4 point(s) fall back to processes' in message
  together, alone, message = sweep.plan_vmap(check(sweep.grid(
      {'model.hidden_size': [8, 16], 'seed': [0, 1]})))
  assert [len(g) for g in together] == [2, 2] and not alone and 'model.hidden_size' in message
  together, alone, message = sweep.plan_vmap(check(sweep.grid({'optim.clip_norm': [0.0, 1.0]})))
  assert len(alone) == 2 and 'clipping on/off' in message  # clipping on/off: another chain


# --- The command line -----------------------------------------------------------------------


@pytest.mark.parametrize('args,message', [
    (['--sweep', 'optim.lrr=[0.001]'], 'optim.lrr is not a key'),
    (['--sweep', 'seed=[]'], 'zero points'),
    (['--config.model.hiden_size=3'], "unknown config key --config.model.hiden_size: model "
     "has no key 'hiden_size' (did you mean model.hidden_size?); its keys: bidirectional,"),
    (['--config.modl.cell=gru'], "the config has no key 'modl' (did you mean model?); its "
     'keys: model, optim, seed, task, train'),
    (['--config.model.cell.x=1'], "model.cell has no key 'x'; its keys: none (a value)"),
    (['--config.optim.learning_rate=0.1'], "(did you mean optim.lr?)"),  # not decay_rate
    (['--config.model.layers=2'], "(did you mean model.num_layers?)"),
])
def test_bad_sweep_exits_2_before_anything_runs(tmp_path, args, message):
  workdir = tmp_path / 'sweep'
  proc = run_module('seqlab.sweep', *QUICK, '--workdir', str(workdir), *args)
  assert proc.returncode == 2, proc.stderr
  assert message in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
  assert 'Traceback' not in proc.stderr
  assert not workdir.exists()


def _statuses(workdir):
  with open(workdir / 'sweep.json') as f:
    return {p['name']: p for p in json.load(f)['points']}


def test_progress_names_the_point_and_paces_a_log_file():
  """Off a terminal a live line is printed at most once per ``every`` s (or when
  forced: the counts changed); an eval line names its point."""
  out = io.StringIO()
  progress = workdir_lib.Progress(4, 0, stream=out, every=60)
  progress.eval(20, {'loss': 0.25}, point='seed=1')
  for line, force in (('a', False), ('b', False), ('c', True)):
    progress.show(line, force=force)
  assert out.getvalue().splitlines() == ['step 20 eval [seed=1] loss=0.25', 'a', 'c']


def test_last_step_reads_past_a_torn_last_row(tmp_path):
  assert sweep.last_step(str(tmp_path)) is None  # no metrics.jsonl yet
  (tmp_path / 'metrics.jsonl').write_text('{"step": 10, "split": "train"}\n'
                                          '{"step": 20, "split": "train"}\n{"step": 3')
  assert sweep.last_step(str(tmp_path)) == 20


def test_process_mode_end_to_end(tmp_path):
  workdir = tmp_path / 'sweep'
  good, bad = 'optim.lr=0.001', 'optim.lr=1e+38'  # 1e38 diverges at step 2
  args = [*QUICK, '--workdir', str(workdir), '--sweep', 'optim.lr=[0.001,1e38]']
  first = run_module('seqlab.sweep', *args, '--parallel', '2', '--config.train.steps=20')
  assert first.returncode == 1, first.stderr  # a point failed, the other finished
  points = _statuses(workdir)
  assert points[good]['status'] == 'done' and points[good]['error'] is None
  assert points[bad]['status'] == 'failed' and 'not finite at step 2' in points[bad]['error']
  assert f'[failed] {bad}' in first.stdout and f'[done] {good}' in first.stdout
  # One summary line for the whole sweep, naming the running points; no backend probe.
  assert f'sweep: 0 of 2 done, 2 running ({good} ' in first.stdout, first.stdout
  assert 'sweep: 1 of 2 done, 0 running, 1 failed' in first.stdout, first.stdout
  assert 'libtpu' not in first.stdout + first.stderr

  # More train.steps: the point is unfinished again and resumes from its checkpoint.
  # (Shard 0 of 2 holds only the first point.)
  args += ['--config.train.steps=30', '--shard', '0/2']
  second = run_module('seqlab.sweep', *args)
  assert second.returncode == 0, second.stderr
  assert 'shard 0/2: 1; 0 done, 1 to run' in second.stdout
  log = (workdir / good / 'log.txt').read_text()
  assert 'Resumed from the checkpoint at step 20' in log
  rows = workdir_lib.read_metrics(str(workdir / good))
  assert [r['step'] for r in rows if r['split'] == 'train'] == [10, 20, 30]
  assert json.loads((workdir / good / 'point.json').read_text())['attempts'] == 2

  # The same command again: the done point is skipped, nothing runs.
  third = run_module('seqlab.sweep', *args)
  assert third.returncode == 0, third.stderr
  assert '1 done, 0 to run' in third.stdout and '[start]' not in third.stdout
  assert (workdir / good / 'log.txt').read_text() == log
  assert _statuses(workdir)[bad]['status'] == 'failed'  # the other shard's, untouched


@pytest.mark.parametrize('mode', ['processes', 'vmap'])
def test_sigterm_stops_a_sweep_and_the_same_command_resumes_it(tmp_path, mode):
  """SIGTERM to ``seqlab.sweep`` mid-run: the running point (process mode: its own
  ``seqlab.run``, to which the sweep passes the signal on; vmap: the population's loop)
  saves a checkpoint, no further point starts, the sweep exits 0 with the points
  'interrupted'; the same sweep run again resumes them from that checkpoint."""
  workdir = tmp_path / 'sweep'
  args = [*QUICK, '--workdir', str(workdir), '--sweep', 'seed=[0,1]', '--mode', mode,
          '--config.train.log_every=5', '--config.train.eval_every=100000',
          '--config.train.checkpoint_every=100000']
  proc = signal_when('seqlab.sweep', [*args, '--config.train.steps=100000'],
                     lambda: workdir_lib.read_metrics(str(workdir / 'seed=0')))
  out, err = proc.stdout, proc.stderr
  assert proc.returncode == 0, err[-3000:]
  assert 'sweep: interrupted; run the same command to resume.' in out, out
  points = _statuses(workdir)
  if mode == 'processes':  # one at a time: the second point never started
    log = (workdir / 'seed=0' / 'log.txt').read_text()
    stopped = int(log.split('SIGTERM: saved the checkpoint at step ')[1].split()[0])
    assert points['seed=0']['status'] == 'interrupted'
    assert points.get('seed=1', {}).get('status', 'pending') == 'pending'
    assert not (workdir / 'seed=1' / 'log.txt').exists()
  else:  # one program: every point saved at the same step
    stopped = int(out.split('SIGTERM: saved every point at step ')[1].split(';')[0])
    assert [points[f'seed={s}']['status'] for s in (0, 1)] == ['interrupted'] * 2
    assert str(stopped) in os.listdir(workdir / 'seed=1' / 'checkpoints')
  assert str(stopped) in os.listdir(workdir / 'seed=0' / 'checkpoints')

  again = run_module('seqlab.sweep', *args, f'--config.train.steps={stopped + 5}')
  assert again.returncode == 0, again.stderr[-3000:]
  assert [_statuses(workdir)[f'seed={s}']['status'] for s in (0, 1)] == ['done'] * 2
  resumed = ((workdir / 'seed=0' / 'log.txt').read_text() if mode == 'processes'
             else again.stderr)
  assert (f'Resumed from the checkpoint at step {stopped}' if mode == 'processes' else
          f'Population of 2 points resumed at step {stopped}') in resumed, resumed[-3000:]
  if mode == 'vmap':  # each point's eval line names it (one program evaluates both)
    assert all(f'step {stopped + 5} eval [seed={s}] ' in again.stderr for s in (0, 1))
    assert 'libtpu' not in again.stdout + again.stderr  # jax's backend probe, at INFO
  rows = workdir_lib.read_metrics(str(workdir / 'seed=0'))
  assert [r['step'] for r in rows if r['split'] == 'train'][-1] == stopped + 5


def test_a_rerun_with_other_shared_overrides_is_refused_in_either_mode(tmp_path):
  """The same sweep with another --config.model.cell: its points' results are those of
  the old config, so the sweep exits 2 before anything runs (and reports nothing done)."""
  workdir = tmp_path / 'sweep'
  args = [*QUICK, '--workdir', str(workdir), '--sweep', 'seed=[0]', '--config.train.steps=4',
          '--config.train.eval_every=2', '--config.train.log_every=2',
          '--config.train.checkpoint_every=2']
  first = run_module('seqlab.sweep', *args)
  assert first.returncode == 0, first.stderr[-3000:]
  log = (workdir / 'seed=0' / 'log.txt').read_text()
  for mode in sweep.MODES:
    again = run_module('seqlab.sweep', *args, '--mode', mode, '--config.model.cell=gru',
                       '--config.model.hidden_size=8')
    assert again.returncode == 2, again.stderr[-3000:]
    assert 'Traceback' not in again.stderr and '[start]' not in again.stdout
    assert again.stderr.strip().splitlines()[-1] == (
        "seqlab: bad sweep (--sweep seed=[0]): point seed=0 was run with another config "
        "(model.cell: 'lstm' -> 'gru'; model.hidden_size: 16 -> 8); give another --workdir, "
        f"or delete {workdir / 'seed=0'} to rerun it")
  saved = json.loads((workdir / 'seed=0' / 'config.json').read_text())
  assert saved['model']['cell'] == 'lstm'
  assert (workdir / 'seed=0' / 'log.txt').read_text() == log


@pytest.mark.parametrize('mode', ['processes', 'vmap'])
def test_a_full_disk_fails_the_points_and_the_same_command_resumes_them(tmp_path, mode):
  """Checkpoints too big for the disk (hidden 64, files limited to 12 KiB): the points
  are 'failed' with the one-line error, not 'done' (their metrics reach train.steps,
  their final checkpoint does not; vmap used to mark them done with a traceback); once
  there is room the same command trains them to done."""
  workdir = tmp_path / 'sweep'
  args = [*QUICK, '--workdir', str(workdir), '--sweep', 'seed=[0,1]', '--mode', mode,
          '--config.model.hidden_size=64', '--config.train.steps=8',
          '--config.train.checkpoint_every=4', '--config.train.eval_every=4']
  proc = run_module('seqlab.sweep', *args, file_limit_kib=12)
  assert proc.returncode == 1, proc.stderr[-3000:]
  points = _statuses(workdir)
  for s in (0, 1):
    assert points[f'seed={s}']['status'] == 'failed', points
    assert 'writing a checkpoint under' in points[f'seed={s}']['error'], points
  if mode == 'vmap':
    assert 'Traceback' not in proc.stderr, proc.stderr[-3000:]
  again = run_module('seqlab.sweep', *args)
  assert again.returncode == 0, again.stderr[-3000:]
  assert [_statuses(workdir)[f'seed={s}']['status'] for s in (0, 1)] == ['done'] * 2
  for s in (0, 1):
    assert '8' in os.listdir(workdir / f'seed={s}' / 'checkpoints')


def test_a_sweep_with_fewer_points_is_refused_on_an_earlier_sweeps_workdir(tmp_path):
  """A rerun with a grid that drops earlier points (their runs on disk) would rewrite
  sweep.json, and so the report, without them: refused before anything runs. A grid
  that extends the earlier one passes the check."""
  workdir = tmp_path / 'sweep'
  for name in ('seed=0', 'seed=1'):
    (workdir / name).mkdir(parents=True)
  (workdir / 'sweep.json').write_text(json.dumps({'points': [
      {'name': 'seed=0'}, {'name': 'seed=1'}]}))
  proc = run_module('seqlab.sweep', *QUICK, '--workdir', str(workdir), '--sweep', 'seed=[5]')
  assert proc.returncode == 2, proc.stderr[-2000:]
  assert '2 point(s) this one lacks (seed=0, seed=1)' in proc.stderr
  assert 'Traceback' not in proc.stderr and not (workdir / 'seed=5').exists()
  grid = [sweep.Point(i, {'seed': s}, load_config('adding'), f'seed={s}',
                      str(workdir / f'seed={s}')) for i, s in enumerate((0, 1, 5))]
  sweep.check_same_points(str(workdir), grid)  # extended: fine
  with pytest.raises(sweep.SweepError, match=r'1 point\(s\) this one lacks \(seed=1\)'):
    sweep.check_same_points(str(workdir), grid[::2])


@pytest.mark.parametrize('mode', ['processes', 'vmap'])
def test_a_done_point_whose_metrics_were_lost_stays_done(tmp_path, mode):
  """Issue 23: done is decided by the last step's checkpoint, not by metrics.jsonl. A
  finished point whose log was deleted is reported done with a warning, every rerun,
  instead of being run again and failed ('stopped before train.steps', exit 1)."""
  workdir = tmp_path / 'sweep'
  args = [*QUICK, '--workdir', str(workdir), '--sweep', 'seed=[0,1]', '--mode', mode,
          '--config.train.steps=4', '--config.train.eval_every=2',
          '--config.train.log_every=2', '--config.train.checkpoint_every=2']
  first = run_module('seqlab.sweep', *args)
  assert first.returncode == 0, first.stderr[-3000:]
  (workdir / 'seed=0' / 'metrics.jsonl').unlink()
  for _ in range(2):
    again = run_module('seqlab.sweep', *args)
    assert again.returncode == 0, again.stderr[-3000:]
    assert '2 done, 0 to run' in again.stdout and '[start]' not in again.stdout
    warnings = [l for l in again.stderr.splitlines() if 'lost its history' in l]
    assert len(warnings) == 1 and warnings[0].startswith(
        'seqlab.sweep: warning: seed=0 is done'), again.stderr[-3000:]
    assert [_statuses(workdir)[f'seed={s}']['status'] for s in (0, 1)] == ['done'] * 2
  assert not (workdir / 'seed=0' / 'metrics.jsonl').exists()  # nothing ran again

"""The training loop: resume, interruption, faults, outputs, many devices."""
import fcntl
import json
import math
import os
import re
import signal
import struct
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from seqlab import checkpoint
from seqlab import losses
from seqlab import run as run_lib
from seqlab import tasks
from seqlab import train
from seqlab import workdir as workdir_lib
from conftest import (HANG_S, NO_COMPILATION_CACHE, ROOT, cpu_env, load_config, run_module,
                      signal_when)


def _final_state(workdir, config):
  task, model, optimizer = train.build(config)
  example = task.batch('train', 0, config.train.batch_size)
  abstract = jax.eval_shape(lambda b: train.create_state(model, optimizer, b, config.seed,
                                                         task.spec.stateful), example)
  ckpt = checkpoint.Checkpointer(workdir)
  state, step = ckpt.restore_latest(abstract)
  ckpt.close()
  return state, step


def _assert_trees_bitwise_equal(a, b):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


class _SignalAt:
  """Wraps a task so that fetching train batch ``index`` sends ``signum`` to us."""

  def __init__(self, task, index, signum=signal.SIGTERM):
    self.task, self.index, self.signum = task, index, signum
    self.spec = task.spec

  def batch(self, split, step, batch_size):
    if split == 'train' and step == self.index:
      os.kill(os.getpid(), self.signum)
    return self.task.batch(split, step, batch_size)

  def num_eval_batches(self, batch_size, split='eval'):
    return self.task.num_eval_batches(batch_size, split)


class _NanAt(_SignalAt):
  def batch(self, split, step, batch_size):
    batch = self.task.batch(split, step, batch_size)
    if split == 'train' and step == self.index:
      batch = dict(batch, inputs=np.full_like(batch['inputs'], np.nan))
    return batch


def _wrap_task(monkeypatch, wrapper, index):
  make = tasks.make_task
  monkeypatch.setattr(tasks, 'make_task', lambda cfg, seed: wrapper(make(cfg, seed), index))


@pytest.mark.parametrize('experiment,stop_at', [('adding', 13), ('charlm', 27)])
def test_interrupted_and_resumed_run_is_bitwise_equal(tmp_path, monkeypatch, experiment, stop_at):
  config = load_config(experiment)
  config.model.num_layers = 2
  config.model.dropout = 0.1  # the dropout RNG must resume too
  full = str(tmp_path / 'full')
  train.train_and_evaluate(config, full)

  parts = str(tmp_path / 'parts')
  with monkeypatch.context() as m:
    _wrap_task(m, _SignalAt, stop_at)  # SIGTERM while fetching batch `stop_at`
    train.train_and_evaluate(config, parts)
  ckpt = checkpoint.Checkpointer(parts)
  assert ckpt.latest_step() == stop_at + 1  # that step finished, then saved
  ckpt.close()
  train.train_and_evaluate(config, parts)  # same command again: resumes

  (a, step_a), (b, step_b) = _final_state(full, config), _final_state(parts, config)
  assert step_a == step_b == config.train.steps
  _assert_trees_bitwise_equal(a, b)
  rows = workdir_lib.read_metrics(parts)
  train_steps = [r['step'] for r in rows if r['split'] == 'train']
  assert train_steps == sorted(set(train_steps))  # no duplicated rows after the resume


class _CountingStep:
  """A jitted train step that records the input shape of every ``lower`` (compile)."""

  def __init__(self, jitted):
    self.jitted, self.shapes = jitted, []

  def lower(self, states, batch, hparams):
    self.shapes.append(batch['inputs'].shape)
    return self.jitted.lower(states, batch, hparams)


def test_length_buckets_compile_once_per_bound_resume_bitwise_and_evaluate_as_padded(
    tmp_path, monkeypatch):
  """Two epochs under train.length_buckets=2: the step is compiled for each bucket's
  bound once (the memory check's compile is the longest bucket's); a run stopped by SIGTERM
  and resumed ends bitwise equal; the eval metrics count every validation case once, as
  without buckets."""
  config = load_config('japanese_vowels')
  config.model.bidirectional, config.model.hidden_size = False, 4
  config.train.length_buckets, config.train.steps = 2, 12
  config.train.eval_every = config.train.checkpoint_every = 14
  steps = []
  program = train._step_program
  monkeypatch.setattr(train, '_step_program', lambda *a: steps.append(
      _CountingStep(program(*a))) or steps[-1])
  full = str(tmp_path / 'full')
  metrics = train.train_and_evaluate(config, full)
  _, task, model, state, _ = train.load_run(full, 'latest')
  bounds = task.bounds(config.train.batch_size)
  assert sorted({t for _, t, _ in steps[0].shapes}) == sorted(bounds)
  assert len(steps[0].shapes) == len(bounds) + 1  # the memory check's is the longest's

  parts = str(tmp_path / 'parts')
  make = tasks.length_buckets
  with monkeypatch.context() as m:
    m.setattr(tasks, 'length_buckets', lambda task, n: _SignalAt(make(task, n), 8))
    train.train_and_evaluate(config, parts)
  train.train_and_evaluate(config, parts)
  (a, _), (b, _) = _final_state(full, config), _final_state(parts, config)
  _assert_trees_bitwise_equal(a, b)

  p_eval = jax.jit(lambda p, batch, c: train.eval_step(p, batch, c, model=model, spec=task.spec))
  padded = train.evaluate(p_eval, model, state['params'], task.padded, 4)
  assert padded == train.evaluate(p_eval, model, state['params'], task, 4) == metrics
  assert padded['count'] == len(task.splits.eval)


def test_run_interrupted_after_an_eval_returns_no_metrics(tmp_path, monkeypatch):
  """Interrupted past a periodic eval (step 20 of 40), the run returns {}: callers such
  as reproduce and sweeps must not record it as finished. Resumed, it returns the final
  eval."""
  config = load_config('adding')
  workdir = str(tmp_path / 'run')
  with monkeypatch.context() as m:
    _wrap_task(m, _SignalAt, 26)
    assert train.train_and_evaluate(config, workdir) == {}
  assert any(r['split'] == 'eval' and r['step'] == 20 for r in workdir_lib.read_metrics(workdir))
  metrics = train.train_and_evaluate(config, workdir)
  assert set(metrics) >= {'loss', 'mse'}


def test_non_finite_loss_stops_naming_the_step_and_keeps_the_checkpoint(tmp_path, monkeypatch):
  config = load_config('adding')
  workdir = str(tmp_path / 'run')
  train.train_and_evaluate(config, workdir)  # 40 steps, checkpoints at 20 and 40
  before = {f: open(os.path.join(dp, f), 'rb').read()
            for dp, _, fs in os.walk(os.path.join(workdir, 'checkpoints', '40')) for f in fs}
  config.train.steps = 80
  _wrap_task(monkeypatch, _NanAt, 52)  # batch 52 is used by step 53
  with pytest.raises(train.NonFiniteError, match=r'not finite at step 53.*step 40'):
    train.train_and_evaluate(config, workdir)
  ckpt = checkpoint.Checkpointer(workdir)
  assert ckpt.latest_step() == 40
  ckpt.close()
  after = {f: open(os.path.join(dp, f), 'rb').read()
           for dp, _, fs in os.walk(os.path.join(workdir, 'checkpoints', '40')) for f in fs}
  assert before == after


def test_corrupt_latest_checkpoint_falls_back_to_the_previous(tmp_path):
  config = load_config('adding')
  workdir = str(tmp_path / 'run')
  train.train_and_evaluate(config, workdir)
  latest = os.path.join(workdir, 'checkpoints', '40')
  for dp, _, fs in os.walk(latest):
    for f in fs:
      if not f.startswith('_'):
        with open(os.path.join(dp, f), 'wb') as fh:
          fh.write(b'garbage')
  config.train.steps = 60
  train.train_and_evaluate(config, workdir)
  rows = workdir_lib.read_metrics(workdir)
  train_rows = [r['step'] for r in rows if r['split'] == 'train']
  assert train_rows == [10, 20, 30, 40, 50, 60]  # steps 21.. were redone from step 20


def test_workdir_outputs(tmp_path):
  config = load_config('copy')
  workdir = str(tmp_path / 'run')
  metrics = train.train_and_evaluate(config, workdir)
  with open(os.path.join(workdir, 'config.json')) as f:
    assert json.load(f)['task']['name'] == 'copy'
  with open(os.path.join(workdir, 'run_info.json')) as f:
    info = json.load(f)
  assert info['seed'] == config.seed and info['versions']['jax'] == jax.__version__
  rows = workdir_lib.read_metrics(workdir)
  tr = [r for r in rows if r['split'] == 'train']
  ev = [r for r in rows if r['split'] == 'eval']
  assert [r['step'] for r in tr] == [10, 20, 30, 40] and [r['step'] for r in ev] == [20, 40]
  for key in ('loss', 'cross_entropy', 'accuracy', 'grad_norm', 'learning_rate',
              'tokens_per_sec', 'step_time'):
    assert all(np.isfinite(r[key]) for r in tr), key
  assert ev[-1]['cross_entropy'] == pytest.approx(metrics['cross_entropy'])
  assert tr[-1]['learning_rate'] == pytest.approx(config.optim.lr)
  group = lambda r: '_'.join([r['split']] + [v for k, v in r.items()  # 'test_best', ...
                                              if k != 'split' and isinstance(v, str)])
  assert _tensorboard_scalars(os.path.join(workdir, 'tensorboard')) == pytest.approx({
      (group(r) + '/' + k, r['step']): v for r in rows for k, v in r.items()
      if k not in ('step', 'split') and not isinstance(v, str)}, rel=1e-6)
  assert {group(r) for r in rows} == {'train', 'eval', 'test_last', 'test_best'}
  assert sorted(os.listdir(os.path.join(workdir, 'best'))) == ['40']


def _tensorboard_scalars(directory) -> dict:
  """{(tag, step): value} of the event files in ``directory``, read by hand from the
  TFRecord framing (u64 length, u32 crc, the Event proto, u32 crc)."""
  from tensorboardX.proto import event_pb2  # pylint: disable=g-import-not-at-top
  out = {}
  for name in os.listdir(directory):
    with open(os.path.join(directory, name), 'rb') as f:
      data = f.read()
    i = 0
    while i < len(data):
      (length,) = struct.unpack('<Q', data[i:i + 8])
      event = event_pb2.Event.FromString(data[i + 12:i + 12 + length])
      i += 16 + length
      for value in event.summary.value:
        out[value.tag, event.step] = value.simple_value
  return out


def test_a_resume_within_a_second_keeps_the_earlier_tensorboard_events(tmp_path):
  """Two writers on one workdir in quick succession (a run stopped at once and
  resumed): the second event file does not replace the first."""
  for step in (1, 2):
    writer = workdir_lib.MetricWriter(str(tmp_path), resume_step=step - 1)
    writer.write(step, 'train', {'loss': float(step)})
    writer.close()
  assert _tensorboard_scalars(tmp_path / 'tensorboard') == {('train/loss', 1): 1.0,
                                                            ('train/loss', 2): 2.0}
  assert [r['step'] for r in workdir_lib.read_metrics(str(tmp_path))] == [1, 2]


def test_a_rerun_of_a_finished_run_reports_its_final_eval_without_logging_it_again(tmp_path):
  args = ('--config', 'experiments/adding.py:quick', '--workdir', str(tmp_path / 'run'),
          '--config.train.steps=6', '--config.train.eval_every=3')
  first = run_module('seqlab.run', *args)
  assert first.returncode == 0, first.stderr[-2000:]
  metrics = (tmp_path / 'run' / 'metrics.jsonl').read_bytes()
  again = run_module('seqlab.run', *args)
  assert again.returncode == 0, again.stderr[-2000:]
  for start in ('final eval:', 'test: best-on-eval checkpoint (step '):
    final = [l for l in first.stdout.splitlines() if l.startswith(start)]
    assert final and final == [l for l in again.stdout.splitlines() if l.startswith(start)]
  # No duplicate row: the test split too was read once, by the first run.
  assert (tmp_path / 'run' / 'metrics.jsonl').read_bytes() == metrics
  assert first.stdout.splitlines()[-1].startswith('test: ')


def test_config_is_never_mutated(tmp_path):
  config = load_config('adding')
  before = config.to_json()
  train.train_and_evaluate(config, str(tmp_path / 'run'))
  assert config.to_json() == before


def test_training_reduces_loss_on_adding(tmp_path):
  config = load_config('adding')
  config.train.steps = 150
  config.train.eval_every = 150
  config.optim.lr = 1e-2
  metrics = train.train_and_evaluate(config, str(tmp_path / 'run'))
  assert metrics['mse'] < 0.167  # beats the memoryless baseline


def test_stateful_chunks_equal_one_long_sequence():
  config = load_config('charlm')
  task, model, optimizer = train.build(config)
  b0, b1 = task.batch('train', 0, 4), task.batch('train', 1, 4)
  assert bool(b0['reset']) and not bool(b1['reset'])
  np.testing.assert_array_equal(b0['targets'][:, -1], b1['inputs'][:, 0])  # contiguous streams
  state = train.create_state(model, optimizer, b0, 0, stateful=True)
  params = state['params']
  out0, carry = train.apply_model(model, params, b0, state['carry'])
  out1, _ = train.apply_model(model, params, b1, carry)
  whole, _ = model.apply(params, np.concatenate([b0['inputs'], b1['inputs']], axis=1))
  np.testing.assert_allclose(np.concatenate([out0, out1], axis=1), whole, rtol=1e-5, atol=1e-5)
  reset, _ = train.apply_model(model, params, b0, carry)  # reset=True ignores the carry
  np.testing.assert_array_equal(reset, out0)


def test_missing_config_file_and_variant(tmp_path):
  proc = run_module('seqlab.run', '--config', 'experiments/nope.py', '--workdir', str(tmp_path))
  assert proc.returncode == 2 and 'experiments/nope.py does not exist' in proc.stderr
  for tool in ('seqlab.run', 'seqlab.sweep'):  # a directory, a missing file: one line each
    proc = run_module(tool, '--config', 'experiments', '--workdir', str(tmp_path / 'd'))
    assert proc.returncode == 2 and 'experiments is a directory' in proc.stderr, proc.stderr
    assert 'Traceback' not in proc.stderr
  proc = run_module('seqlab.sweep', '--config', 'experiments/nope.py', '--workdir', str(tmp_path))
  assert proc.returncode == 2 and 'does not exist' in proc.stderr
  assert 'Traceback' not in proc.stderr
  proc = run_module('seqlab.run', '--config', 'experiments/adding.py:nope', '--workdir',
                    str(tmp_path))
  assert proc.returncode == 2 and 'unknown variant' in proc.stderr
  assert 'Traceback' not in proc.stderr
  proc = run_module('seqlab.run', '--config', 'experiments/adding.py:quick', '--workdir',
                    'gs://bucket/runs/x')
  assert proc.returncode == 2 and 'gcsfuse' in proc.stderr
  assert not os.path.exists(os.path.join(ROOT, 'gs:'))  # no local 'gs:/bucket/...' folder
  for text, message in (('def get_config(:\n', 'does not parse: .*line 1: invalid syntax'),
                        ('x = 1\n', r'defines no get_config\(\)')):
    (tmp_path / 'mine.py').write_text(text)
    proc = run_module('seqlab.run', '--config', str(tmp_path / 'mine.py'), '--workdir',
                      str(tmp_path / 'run'))
    assert proc.returncode == 2 and re.search(message, proc.stderr), proc.stderr[-2000:]
    assert 'Traceback' not in proc.stderr


def _sigterm_after_first_log(args, workdir):
  """Starts ``python -m seqlab.run *args --workdir workdir``, sends it SIGTERM once its
  first metrics row is written, and returns (returncode, stdout, stderr)."""
  proc = signal_when('seqlab.run', [*args, '--workdir', str(workdir)],
                     lambda: workdir_lib.read_metrics(str(workdir)))
  return proc.returncode, proc.stdout, proc.stderr


def test_sigterm_saves_and_exits_zero(tmp_path):
  workdir = tmp_path / 'run'
  returncode, out, err = _sigterm_after_first_log(
      ['--config', 'experiments/adding.py:quick', '--config.train.steps=100000',
       '--config.train.log_every=5', '--config.train.eval_every=100000',
       '--config.train.checkpoint_every=100000'], workdir)
  assert returncode == 0, err
  assert 'SIGTERM: saved the checkpoint at step' in out
  step = int(out.split('at step ')[1].split()[0])
  assert str(step) in os.listdir(workdir / 'checkpoints')


@pytest.mark.parametrize('moment,sig', [
    (0.2, signal.SIGINT), (1.0, signal.SIGTERM), (2.5, signal.SIGINT),
    ('config.json', signal.SIGTERM)])
def test_a_signal_before_training_ends_the_run_at_once_in_one_line(tmp_path, moment, sig):
  """Ctrl-C or SIGTERM before the first step (jax importing, building, compiling: from
  0.2 s on, once the tool's first line ran, and once config.json is written) ends
  ``seqlab.run`` at once: one line, exit code 128 + the signal, no traceback, no
  checkpoint, the workdir lock free. Before, a SIGINT while jax imported gave a
  traceback or was swallowed by jax's gc callback (the run trained on), and a SIGTERM
  while compiling waited for the compile and the first step."""
  workdir = tmp_path / 'run'
  t0 = time.time()
  ready = ((workdir / moment).exists if isinstance(moment, str) else
           lambda: time.time() - t0 >= moment)
  proc = signal_when('seqlab.run', ['--config', 'experiments/adding.py:quick',
                                    '--config.train.steps=100000', '--workdir', str(workdir)],
                     ready, sig=sig, handled=True, env=NO_COMPILATION_CACHE)
  name = signal.Signals(sig).name
  assert proc.returncode == 128 + sig, proc.stderr[-3000:]
  assert proc.stderr.splitlines()[-1] == f'seqlab: {name}: stopped{run_lib.STOPPED}'
  assert 'Traceback' not in proc.stderr and 'Exception ignored' not in proc.stderr
  assert proc.exit_s < 60, proc.exit_s  # a hang guard: the exit itself takes milliseconds
  assert not list((workdir / 'checkpoints').glob('*'))
  if (workdir / 'config.json').exists():
    json.loads((workdir / 'config.json').read_text())  # whole
  if (workdir / '.lock').exists():
    with open(workdir / '.lock') as f:
      fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)  # free: no BlockingIOError


def test_a_resume_in_a_new_process_is_bitwise_equal(tmp_path):
  """The README's promise as a user meets it: SIGTERM a ``seqlab.run``, give the same
  command again (a new process: fresh compile, data pipeline and RNG state from the
  checkpoint), and the final state equals an uninterrupted run's bit for bit. (On a
  GPU this needs ``XLA_FLAGS=--xla_gpu_deterministic_ops=true``, as the README says.)"""
  steps = 1000  # the SIGTERM comes after step 5's row: ~200 x that many steps to go
  args = ['--config', 'experiments/adding.py:quick', f'--config.train.steps={steps}',
          '--config.train.log_every=5', '--config.train.eval_every=500',
          '--config.train.checkpoint_every=1000', '--config.model.num_layers=2',
          '--config.model.dropout=0.1']  # two layers, so the dropout RNG must resume too
  full = run_module('seqlab.run', *args, '--workdir', str(tmp_path / 'full'))
  assert full.returncode == 0, full.stderr[-3000:]

  parts = tmp_path / 'parts'
  returncode, out, err = _sigterm_after_first_log(args, parts)
  assert returncode == 0, err[-3000:]
  stopped = int(out.split('SIGTERM: saved the checkpoint at step ')[1].split()[0])
  assert 0 < stopped < steps  # interrupted mid-run, not at a scheduled checkpoint
  again = run_module('seqlab.run', *args, '--workdir', str(parts))
  assert again.returncode == 0, again.stderr[-3000:]

  config = load_config('adding')
  config.train.steps, config.model.num_layers, config.model.dropout = steps, 2, 0.1
  (a, step_a), (b, step_b) = _final_state(str(tmp_path / 'full'), config), _final_state(str(parts), config)
  assert step_a == step_b == steps
  _assert_trees_bitwise_equal(a, b)


def test_eight_devices_match_one(tmp_path):
  """Data parallel over 8 CPU devices: same losses as 1 device; checkpoints move across."""
  env = cpu_env(8)
  args = ['--config', 'experiments/copy.py:quick', '--config.train.steps=20']
  one = run_module('seqlab.run', *args, '--workdir', str(tmp_path / 'one'), env=cpu_env())
  eight = run_module('seqlab.run', *args, '--workdir', str(tmp_path / 'eight'), env=env)
  assert one.returncode == 0 and eight.returncode == 0, eight.stderr
  info = json.load(open(tmp_path / 'eight' / 'run_info.json'))
  assert len(info['devices']) == 8
  rows1 = workdir_lib.read_metrics(str(tmp_path / 'one'))
  rows8 = workdir_lib.read_metrics(str(tmp_path / 'eight'))
  for r1, r8 in zip(rows1, rows8, strict=True):
    assert r1['step'] == r8['step']
    assert r8['loss'] == pytest.approx(r1['loss'], rel=1e-4)
  # seqlab.evaluate (train.load_run) reads the 8-device checkpoint on 1 device.
  evaluated = run_module('seqlab.evaluate', '--workdir', str(tmp_path / 'eight'),
                         '--checkpoint', 'latest', env=cpu_env())
  assert evaluated.returncode == 0, evaluated.stderr[-3000:]
  assert json.loads(evaluated.stdout[evaluated.stdout.index('{'):])['step'] == 20
  # The 8-device checkpoint resumes on 1 device, and that one back on 8.
  more = ['--config.train.steps=30']
  back = run_module('seqlab.run', *args, *more, '--workdir', str(tmp_path / 'eight'),
                    env=cpu_env())
  assert back.returncode == 0, back.stderr
  more = ['--config.train.steps=40']
  again = run_module('seqlab.run', *args, *more, '--workdir', str(tmp_path / 'eight'), env=env)
  assert again.returncode == 0, again.stderr
  steps = [r['step'] for r in workdir_lib.read_metrics(str(tmp_path / 'eight'))
           if r['split'] == 'train']
  assert steps == [10, 20, 30, 40]


def test_batch_not_divisible_by_devices_is_a_config_error(tmp_path):
  env = cpu_env(8)
  proc = run_module('seqlab.run', '--config', 'experiments/copy.py:quick',
                    '--config.train.batch_size=12', '--workdir', str(tmp_path), env=env)
  assert proc.returncode == 2 and 'does not split over 8 devices' in proc.stderr


def test_best_checkpoint_ranks_by_train_best_metric_in_its_own_direction(tmp_path):
  """``best/`` holds the eval step that ``train.best_metric`` ranks first in that
  metric's own direction: the lowest loss on MNIST-1D, whose main metric (accuracy) is
  better higher. (Once every metric was ranked the task's way: the highest loss.) The
  eval rows hold exactly the metrics ``losses.eval_metrics`` names."""
  config = load_config('mnist1d')
  config.train.best_metric = 'loss'
  config.train.steps, config.train.eval_every = 30, 10
  workdir = tmp_path / 'run'
  train.train_and_evaluate(config, str(workdir))
  evals = [r for r in workdir_lib.read_metrics(str(workdir)) if r['split'] == 'eval']
  lowest = min(evals, key=lambda r: r['loss'])['step']
  assert lowest != max(evals, key=lambda r: r['loss'])['step']  # the test can tell
  assert sorted(os.listdir(workdir / 'best')) == [str(lowest)]
  spec = tasks.make_task(config.task, config.seed).spec
  assert spec.metric_mode == 'max' and losses.best_metric(spec, 'loss') == ('loss', 'min')
  assert set(evals[0]) - {'step', 'split', 'count'} == set(losses.eval_metrics(spec))


def test_train_log_row_weights_steps_by_their_count():
  """A log window's metrics are those of its steps as one batch: weighted by 'count',
  perplexity and bpc from the pooled cross-entropy (not their mean), grad_norm per step."""
  rows = [dict(loss=1.0, cross_entropy=1.0, perplexity=math.e, bpc=1 / math.log(2),
               accuracy=0.5, count=1.0, grad_norm=2.0),
          dict(loss=2.0, cross_entropy=2.0, perplexity=math.e ** 2, bpc=2 / math.log(2),
               accuracy=1.0, count=3.0, grad_norm=4.0)]
  row = train.window_metrics(rows)
  assert row['loss'] == row['cross_entropy'] == pytest.approx(1.75)
  assert row['perplexity'] == pytest.approx(math.exp(1.75))
  assert row['bpc'] == pytest.approx(1.75 / math.log(2))
  assert row['accuracy'] == pytest.approx(0.875) and row['count'] == 4.0
  assert row['grad_norm'] == pytest.approx(3.0)


def test_divergence_while_a_save_is_in_flight_keeps_the_step_it_names(tmp_path):
  """SGD at lr 1e6 diverges two steps after a checkpoint is started: the run waits for
  that save before it names it and exits, so the step is on disk and restores."""
  workdir = str(tmp_path / 'run')
  proc = run_module('seqlab.run', '--config', 'experiments/adding.py:quick', '--workdir',
                    workdir, '--config.train.steps=10', '--config.train.checkpoint_every=2',
                    '--config.train.log_every=1', '--config.optim.name=sgd',
                    '--config.optim.clip_norm=0', '--config.optim.lr=1e6')
  assert proc.returncode == 1, proc.stderr[-2000:]
  named = int(re.search(r'last good checkpoint \(step (\d+)\)', proc.stderr).group(1))
  assert str(named) in os.listdir(os.path.join(workdir, 'checkpoints'))
  config = load_config('adding')
  config.optim.name, config.optim.clip_norm, config.optim.lr = 'sgd', 0.0, 1e6
  state, step = _final_state(workdir, config)
  assert step == named and all(np.isfinite(x).all() for x in jax.tree.leaves(state['params']))


def test_resuming_with_a_config_the_checkpoints_do_not_fit_is_refused(tmp_path):
  """A changed optimizer (clip_norm 0 drops a state) or model shape would not restore:
  the run refuses, naming the changed keys, and leaves the run as it was."""
  workdir = tmp_path / 'run'
  args = ('--config', 'experiments/adding.py:quick', '--workdir', str(workdir))
  assert run_module('seqlab.run', *args).returncode == 0
  files = lambda: {str(p.relative_to(workdir)): p.read_bytes()
                   for p in workdir.rglob('*')
                   if p.is_file() and 'events' not in p.name and p.name != '.lock'}
  before = files()
  for change, key in (('--config.optim.clip_norm=0', 'optim.clip_norm: 1.0 -> 0.0'),
                      ('--config.model.hidden_size=8', 'model.hidden_size: 16 -> 8')):
    proc = run_module('seqlab.run', *args, '--config.train.steps=60', change)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert 'do not restore into this config' in proc.stderr and key in proc.stderr
    assert 'Traceback' not in proc.stderr
    assert 'strict=False' not in proc.stderr  # orbax's advice, which no seqlab user can take
    assert files() == before


def test_a_failed_checkpoint_write_stops_the_run_with_a_message(tmp_path):
  """A disk that fills while step 40 is written: one line naming the cause, exit 1
  (not a hang on orbax's waiting threads), and step 20 kept."""
  workdir = str(tmp_path / 'run')
  script = tmp_path / 'full_disk.py'
  script.write_text(
      'import sys\n'
      'from etils.epath import backend\n'
      'real = backend._OsPathBackend.makedirs\n'
      'def makedirs(self, path, *a, **k):\n'
      "  if '40.orbax-checkpoint-tmp' in str(path):\n"
      "    raise OSError(28, 'No space left on device', str(path))\n"
      '  return real(self, path, *a, **k)\n'
      'backend._OsPathBackend.makedirs = makedirs\n'
      'from seqlab import run\n'
      "sys.argv = ['seqlab.run', '--config', 'experiments/adding.py:quick', '--workdir', "
      'sys.argv[1]]\n'
      'run.run()\n')
  proc = subprocess.run([sys.executable, str(script), workdir], cwd=ROOT, capture_output=True,
                        text=True, timeout=HANG_S)
  assert proc.returncode == 1, proc.stderr[-2000:]
  assert 'seqlab: training stopped: writing a checkpoint' in proc.stderr
  assert 'No space left on device' in proc.stderr
  assert os.listdir(os.path.join(workdir, 'checkpoints')) == ['20']


def test_check_writable_names_the_directory_and_the_fix(tmp_path, monkeypatch):
  def refuse(*args, **kwargs):
    raise PermissionError(13, 'Permission denied', kwargs.get('dir'))
  ckpt = checkpoint.Checkpointer(str(tmp_path))
  monkeypatch.setattr(checkpoint.tempfile, 'TemporaryFile', refuse)
  with pytest.raises(checkpoint.CheckpointWriteError, match='cannot write checkpoints in .*'
                     'Permission denied.*another --workdir'):
    ckpt.check_writable()
  ckpt.close()


def test_an_update_that_is_not_finite_is_not_applied():
  """Finite loss and gradient but a NaN update (an optimizer dividing 0 by 0): the
  state stays the last good one and ``bad_step`` names the step."""
  config = load_config('adding')
  task, model, _ = train.build(config)
  nan = optax.GradientTransformation(
      lambda params: optax.EmptyState(),
      lambda grads, state, params=None: (jax.tree.map(lambda g: g * jnp.nan, grads), state))
  batch = task.batch('train', 0, config.train.batch_size)
  state = train.create_state(model, nan, batch, 0)
  new, metrics = train.train_step(state, batch, model=model, optimizer=nan, spec=task.spec)
  assert np.isfinite(float(metrics['loss'])) and np.isfinite(float(metrics['grad_norm']))
  assert int(new['bad_step']) == 1
  _assert_trees_bitwise_equal(new['params'], state['params'])


def _full_disk_run(tmp_path, *overrides):
  """``seqlab.run`` of adding:quick whose files may not grow past 12 KiB. Before these
  fixes such a run could also hang (the timeout)."""
  return run_module('seqlab.run', '--config', 'experiments/adding.py:quick', '--workdir',
                    str(tmp_path / 'run'), *overrides, file_limit_kib=12)


def _only_log_progress_and(line: str, stderr: str) -> list[str]:
  """The stderr lines that are neither absl log lines, progress or eval lines nor ``line``."""
  return [l for l in stderr.splitlines()
          if not (re.match(r'[IW]\d{4} |step \d+(/| eval )', l) or l.startswith(line))]


def test_a_full_disk_stops_the_run_in_one_line(tmp_path):
  """The checkpoint is too big (hidden 64: a 64 KiB kernel): one `seqlab:` line naming
  it and exit 1; neither orbax's error logs (hundreds of lines) nor tensorstore's
  callbacks into the failed save's closed loop ("Event loop is closed", 18-36
  tracebacks) reach stderr."""
  proc = _full_disk_run(tmp_path, '--config.model.hidden_size=64', '--config.train.steps=8',
                        '--config.train.checkpoint_every=2', '--config.train.eval_every=2',
                        '--config.train.log_every=2')
  assert proc.returncode == 1, proc.stderr[-3000:]
  assert 'seqlab: training stopped: writing a checkpoint' in proc.stderr
  assert 'Error writing' in proc.stderr
  assert not _only_log_progress_and('seqlab: training stopped: ', proc.stderr), proc.stderr[-3000:]


def test_a_full_disk_while_logging_stops_the_run_in_one_line(tmp_path):
  """metrics.jsonl or the TensorBoard events fill the disk first (a row a step): one
  line naming the file and exit 1. TensorBoard events used to be written by a
  background thread that died on the error, after which the run blocked forever on
  its full queue; metrics.jsonl's OSError was a traceback. The rows written stay
  readable."""
  proc = _full_disk_run(tmp_path, '--config.train.steps=400', '--config.train.log_every=1',
                        '--config.train.eval_every=1000', '--config.train.checkpoint_every=1000')
  assert proc.returncode == 1, proc.stderr[-3000:]
  assert re.search(r'seqlab: training stopped: writing \S+(metrics\.jsonl|tensorboard) '
                   r'failed \(File too large\)', proc.stderr), proc.stderr[-3000:]
  assert not _only_log_progress_and('seqlab: training stopped: ', proc.stderr), proc.stderr[-3000:]
  rows = workdir_lib.read_metrics(str(tmp_path / 'run'))
  assert 20 < len(rows) < 400 and [r['step'] for r in rows] == list(range(1, len(rows) + 1))


def test_checkpoints_that_do_not_restore_are_kept_and_the_run_refused(tmp_path):
  """Same config, every step unreadable: no start from scratch over them (its first
  save would delete them); exit 2 saying how to start over, the steps still there."""
  workdir = tmp_path / 'run'
  args = ('--config', 'experiments/adding.py:quick', '--workdir', str(workdir))
  assert run_module('seqlab.run', *args).returncode == 0
  for step in ('20', '40'):
    for p in (workdir / 'checkpoints' / step).rglob('*'):
      if p.is_file():
        p.write_bytes(b'')
  proc = run_module('seqlab.run', *args, '--config.train.steps=60')
  assert proc.returncode == 2, proc.stderr[-2000:]
  assert 'no checkpoint in' in proc.stderr and 'move the checkpoints directory away' in proc.stderr
  assert sorted(os.listdir(workdir / 'checkpoints')) == ['20', '40']
  assert 'Traceback' not in proc.stderr

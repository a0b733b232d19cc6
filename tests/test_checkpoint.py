"""seqlab.checkpoint: bitwise roundtrips of a real train state, pruning, best-by-metric,
damaged and interrupted checkpoints."""
import json
import logging
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from seqlab import checkpoint
from seqlab import train
from seqlab import workdir as workdir_lib
from conftest import HANG_S
from seqlab.checkpoint import Checkpointer
from conftest import NO_COMPILATION_CACHE, load_config, run_module

TX = optax.chain(optax.clip_by_global_norm(1.0),
                 optax.adamw(optax.cosine_decay_schedule(1e-2, 10), weight_decay=1e-2))


def make_state(seed: int, updates: int = 2):
  """A seqlab-shaped train state after a few real adamw updates."""
  k1, k2, k3 = jax.random.split(jax.random.key(seed), 3)
  params = {'Dense_0': {'kernel': jax.random.normal(k1, (3, 4)), 'bias': jnp.zeros(4)},
            'embed': jax.random.normal(k2, (5, 2)).astype(jnp.bfloat16)}
  with jax.numpy_dtype_promotion('standard'):  # optax mixes dtypes internally
    opt_state = TX.init(params)
    for i in range(updates):
      grads = jax.tree.map(lambda p: jnp.full_like(p, 0.1 * (i + 1)), params)
      u, opt_state = TX.update(grads, opt_state, params)
      params = optax.apply_updates(params, u)
  return {'step': jnp.int32(updates), 'params': params, 'opt_state': opt_state,
          'rng': jax.random.key_data(k3)}


def abstract(state):
  return jax.eval_shape(lambda: state)


def assert_bitwise_equal(restored, expected):
  assert jax.tree.structure(restored) == jax.tree.structure(expected)
  for r, e in zip(jax.tree.leaves(restored), jax.tree.leaves(expected)):
    r, e = np.asarray(r), np.asarray(e)
    assert r.dtype == e.dtype and r.shape == e.shape
    assert r.tobytes() == e.tobytes()


def steps_on_disk(path):
  return sorted(int(p.name) for p in pathlib.Path(path).iterdir() if p.name.isdigit())


@pytest.mark.parametrize('async_save', [True, False])
def test_roundtrip_is_bitwise_with_optax_state(tmp_path, async_save):
  state = make_state(0)
  ck = Checkpointer(str(tmp_path), async_save=async_save)
  ck.save(2, state)
  ck.close()
  ck = Checkpointer(str(tmp_path))  # a fresh process's view
  assert ck.latest_step() == 2
  restored, step = ck.restore_latest(abstract(state))
  assert step == 2
  assert_bitwise_equal(restored, state)
  assert isinstance(restored['opt_state'][1][0], optax.ScaleByAdamState)
  assert isinstance(restored['opt_state'][1][2], optax.ScaleByScheduleState)
  restored_again, _ = ck.restore_latest(make_state(1))  # a target of arrays works too
  assert_bitwise_equal(restored_again, state)
  ck.close()


def test_numpy_and_python_leaves_roundtrip(tmp_path):
  state = {'epoch': 3, 'ema': 0.25, 'table': np.linspace(0.0, 1.0, 7)}  # float64
  ck = Checkpointer(str(tmp_path))
  ck.save(1, state)
  ck.wait()
  restored, _ = ck.restore_latest(state)
  assert restored == {'epoch': 3, 'ema': 0.25, 'table': restored['table']}
  assert type(restored['epoch']) is int and type(restored['ema']) is float
  assert_bitwise_equal(restored['table'], state['table'])
  ck.close()


def test_async_save_survives_donation(tmp_path):
  """The train step donates the state right after save() returns; the saved copy must
  not depend on those buffers."""
  state = make_state(0)
  expected = jax.tree.map(np.array, state)
  ck = Checkpointer(str(tmp_path))
  ck.save(2, state)
  for leaf in jax.tree.leaves(state):
    leaf.delete()
  ck.wait()
  assert_bitwise_equal(ck.restore_latest(abstract(expected))[0], expected)
  ck.close()


def test_keeps_the_last_n(tmp_path):
  ck = Checkpointer(str(tmp_path), keep=2)
  for step in range(1, 6):
    ck.save(step, make_state(step, updates=1))
  ck.wait()
  assert steps_on_disk(tmp_path / 'checkpoints') == [4, 5]
  restored, step = ck.restore_latest(abstract(make_state(0, updates=1)))
  assert step == 5
  assert_bitwise_equal(restored, make_state(5, updates=1))
  ck.close()


@pytest.mark.parametrize('mode,values,best', [
    ('min', [3.0, 1.0, 2.0, 0.5, 0.7, float('nan')], 4),
    ('max', [0.1, 0.6, 0.4, 0.9, 0.9, 0.2], 4),  # a tie does not replace the best
])
def test_best_keeps_the_best_by_metric(tmp_path, mode, values, best):
  ck = Checkpointer(str(tmp_path), best_metric='score', best_mode=mode)
  for step, v in enumerate(values, start=1):
    ck.save_best(step, make_state(step, updates=1), {'score': v, 'other': -v})
  ck.close()
  assert steps_on_disk(tmp_path / 'best') == [best]
  ck = Checkpointer(str(tmp_path), best_metric='score', best_mode=mode)
  restored, step = ck.restore_best(abstract(make_state(0, updates=1)))
  assert step == best
  assert_bitwise_equal(restored, make_state(best, updates=1))
  # The best so far is read back from disk: a worse value after a restart is ignored.
  ck.save_best(100, make_state(100, updates=1), {'score': values[0]})
  ck.close()
  assert steps_on_disk(tmp_path / 'best') == [best]


def test_save_best_checks_its_metric(tmp_path):
  with pytest.raises(ValueError, match='best_metric'):
    Checkpointer(str(tmp_path / 'a')).save_best(1, make_state(0), {'loss': 1.0})
  with pytest.raises(ValueError, match="best_metric='acc'"):
    Checkpointer(str(tmp_path / 'b'), best_metric='acc').save_best(1, make_state(0),
                                                                     {'loss': 1.0})
  with pytest.raises(ValueError, match='best_mode'):
    Checkpointer(str(tmp_path / 'c'), best_mode='lowest')


def test_restore_best_falls_back_to_latest(tmp_path):
  ck = Checkpointer(str(tmp_path), best_metric='loss')
  ck.save(3, make_state(3))
  ck.wait()
  restored, step = ck.restore_best(abstract(make_state(0)))
  assert step == 3
  assert_bitwise_equal(restored, make_state(3))
  ck.close()


def test_nothing_saved_gives_none(tmp_path):
  ck = Checkpointer(str(tmp_path), best_metric='loss')
  assert ck.latest_step() is None
  assert ck.restore_latest(abstract(make_state(0))) is None
  assert ck.restore_best(abstract(make_state(0))) is None
  ck.close()


def test_save_at_an_existing_step_is_a_noop(tmp_path):
  ck = Checkpointer(str(tmp_path))
  ck.save(4, make_state(4))
  ck.save(4, make_state(9))  # while the first may still be in flight
  ck.wait()
  ck.save(4, make_state(9), force=True)  # e.g. the final forced save
  ck.wait()
  assert_bitwise_equal(ck.restore_latest(abstract(make_state(0)))[0], make_state(4))
  ck.close()


def _delete_item(step_dir):
  for p in sorted(step_dir.rglob('*'), reverse=True):
    if p.parent == step_dir and p.is_dir():
      for q in sorted(p.rglob('*'), reverse=True):
        q.unlink() if q.is_file() else q.rmdir()
      p.rmdir()


def _truncate_files(step_dir):
  for p in step_dir.rglob('*'):
    if p.is_file():
      p.write_bytes(p.read_bytes()[:3])


def _delete_data_files(step_dir):
  """Leaves every metadata file and removes the array bytes (OCDBT data files)."""
  for p in step_dir.rglob('d/*'):
    p.unlink()


def _overwrite_middle(step_dir, largest_only=False):
  """The issue's reproducer: 4 bytes overwritten in the middle of every data file (or
  the largest, which holds the array bytes), sizes unchanged (``dd conv=notrunc``)."""
  files = sorted(step_dir.rglob('d/*'), key=lambda p: p.stat().st_size)
  for p in files[-1:] if largest_only else files:
    with open(p, 'r+b') as f:
      f.seek(p.stat().st_size // 2)
      f.write(b'\xff\x00\xff\x00')


@pytest.mark.parametrize('damage', [_delete_item, _truncate_files, _delete_data_files,
                                    _overwrite_middle])
def test_damaged_newest_falls_back_to_the_previous(tmp_path, caplog, damage):
  ck = Checkpointer(str(tmp_path), keep=3)
  for step in (1, 2, 3):
    ck.save(step, make_state(step))
  ck.close()
  damage(tmp_path / 'checkpoints' / '3')

  ck = Checkpointer(str(tmp_path), keep=3)
  with caplog.at_level(logging.WARNING):
    restored, step = ck.restore_latest(abstract(make_state(0)))
  assert step == 2
  assert_bitwise_equal(restored, make_state(2))
  warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
  assert any('checkpoints/3 cannot be restored' in w for w in warnings), warnings
  assert not any('Traceback' in w for w in warnings)

  # The run continues from step 2: its next save replaces the damaged step 3.
  ck.save(3, make_state(33))
  ck.close()
  ck = Checkpointer(str(tmp_path))
  restored, step = ck.restore_latest(abstract(make_state(0)))
  assert step == 3
  assert_bitwise_equal(restored, make_state(33))
  ck.close()


@pytest.mark.parametrize('damage', [_truncate_files, _overwrite_middle])
def test_every_step_damaged_gives_none_and_deletes_nothing(tmp_path, damage):
  ck = Checkpointer(str(tmp_path))
  ck.save(1, make_state(1))
  ck.close()
  damage(tmp_path / 'checkpoints' / '1')
  ck = Checkpointer(str(tmp_path))
  assert ck.restore_latest(abstract(make_state(0))) is None
  assert ck.latest_step() == 1  # what seqlab.train refuses to start over
  ck.save(2, make_state(2))
  ck.close()
  assert steps_on_disk(tmp_path / 'checkpoints') == [1, 2]


def test_checksum_is_of_the_bytes_dtypes_and_shapes():
  state = make_state(0)
  same = jax.tree.map(lambda x: np.array(x), state)  # the host copy restores give back
  assert checkpoint.checksum(same) == checkpoint.checksum(state)
  flipped = jax.tree.map(lambda x: x, same)
  flipped['params']['Dense_0']['bias'] = flipped['params']['Dense_0']['bias'].copy()
  flipped['params']['Dense_0']['bias'].view(np.uint32)[0] ^= 1  # one bit
  assert checkpoint.checksum(flipped) != checkpoint.checksum(state)
  step = dict(same, step=np.int32(3))  # the data position
  assert checkpoint.checksum(step) != checkpoint.checksum(state)
  reshaped = dict(same, rng=same['rng'].reshape(1, -1))
  assert checkpoint.checksum(reshaped) != checkpoint.checksum(state)


def test_a_saved_non_finite_state_is_never_restored(tmp_path, caplog):
  """A non-finite float is damage even where the checksum matches (training never
  saves one): the step before it is the one restored."""
  ck = Checkpointer(str(tmp_path))
  ck.save(1, make_state(1))
  bad = make_state(2)
  bad['params']['Dense_0']['kernel'] = bad['params']['Dense_0']['kernel'].at[0, 0].set(jnp.nan)
  ck.save(2, bad)
  ck.close()
  ck = Checkpointer(str(tmp_path))
  with caplog.at_level(logging.WARNING):
    restored, step = ck.restore_latest(abstract(make_state(0)))
  ck.close()
  assert step == 1
  assert_bitwise_equal(restored, make_state(1))
  assert 'checkpoints/2 cannot be restored' in caplog.text and 'not finite' in caplog.text


def test_a_step_written_without_checksum_restores(tmp_path):
  """Steps written before checksums existed (no custom metadata) still restore."""
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  manager = checkpoint._manager(str(tmp_path / 'checkpoints'), keep=3, async_save=False)
  manager.save(1, args=ocp.args.StandardSave(make_state(1)))
  manager.close()
  ck = Checkpointer(str(tmp_path))
  restored, step = ck.restore_latest(abstract(make_state(0)))
  ck.close()
  assert step == 1
  assert_bitwise_equal(restored, make_state(1))


@pytest.mark.parametrize('which', ['latest', 'best'])
def test_read_only_refuses_a_damaged_step(tmp_path, which):
  """The tools (evaluate, sample) read the step they name, or refuse it."""
  ck = Checkpointer(str(tmp_path), best_metric='loss')
  for step in (1, 2):
    ck.save(step, make_state(step))
    ck.save_best(step, make_state(step), {'loss': 1.0 / step})
  ck.close()
  _overwrite_middle(tmp_path / ('checkpoints' if which == 'latest' else 'best') / '2')
  ck = Checkpointer(str(tmp_path), read_only=True)
  restore = ck.restore_latest if which == 'latest' else ck.restore_best
  with pytest.raises(checkpoint.DamagedCheckpointError, match=r'/2 is damaged \('):
    restore(abstract(make_state(0)))
  ck.close()


def test_a_step_whose_contents_differ_from_its_checksum_is_damaged(tmp_path, caplog):
  """Contents that read back fine but differ from what was written (here: the checksum
  written with them swapped for another step's) are skipped like unreadable ones."""
  ck = Checkpointer(str(tmp_path))
  for step in (1, 2):
    ck.save(step, make_state(step))
  ck.close()
  meta = [tmp_path / 'checkpoints' / s / '_CHECKPOINT_METADATA' for s in ('1', '2')]
  one, two = (json.loads(m.read_text()) for m in meta)
  two['custom_metadata'] = one['custom_metadata']
  meta[1].write_text(json.dumps(two))
  ck = Checkpointer(str(tmp_path))
  with caplog.at_level(logging.WARNING):
    restored, step = ck.restore_latest(abstract(make_state(0)))
  assert step == 1 and ck.latest_step() == 1
  ck.close()
  assert_bitwise_equal(restored, make_state(1))
  assert 'checkpoints/2 cannot be restored' in caplog.text
  assert 'do not match the checksum' in caplog.text


def test_the_issue_reproducer_resumes_from_the_step_before(tmp_path):
  """Issue 23: the newest step deleted, the one before overwritten in place. The rerun
  skips it with a warning, resumes from the step before and ends as an uninterrupted
  run; evaluate refuses the damaged step in one line."""
  config = load_config('adding')
  config.train.checkpoint_every = 10
  clean = train.train_and_evaluate(config, str(tmp_path / 'clean'))
  workdir = tmp_path / 'run'
  train.train_and_evaluate(config, str(workdir))
  shutil.rmtree(workdir / 'checkpoints' / '40')
  _overwrite_middle(workdir / 'checkpoints' / '30')

  proc = run_module('seqlab.evaluate', '--workdir', str(workdir), '--checkpoint', 'latest')
  assert proc.returncode == 2, proc.stderr[-2000:]
  lines = [l for l in proc.stderr.splitlines() if l.startswith('seqlab:')]
  assert len(lines) == 1 and 'checkpoints/30 is damaged' in lines[0], proc.stderr[-2000:]
  assert 'Traceback' not in proc.stderr

  assert train.train_and_evaluate(config, str(workdir)) == clean
  rows = [r['step'] for r in workdir_lib.read_metrics(str(workdir)) if r['split'] == 'train']
  assert rows == [10, 20, 30, 40]


_WRITER = textwrap.dedent('''
    import sys
    import numpy as np
    from seqlab.checkpoint import Checkpointer
    ck = Checkpointer(sys.argv[1], keep=100, async_save=False)
    for step in range(1, 10_000):
      ck.save(step, {'w': np.full((4, 1024, 1024), step, np.float32)})
''')


def test_a_killed_save_leaves_older_steps_intact(tmp_path):
  """SIGKILL a writer in the middle of a save: the finished steps still restore, the
  unfinished one is invisible and its tmp directory is removed on the next start."""
  root = tmp_path / 'checkpoints'
  env = dict(os.environ, PYTHONPATH=str(pathlib.Path(__file__).parents[1]),
             **NO_COMPILATION_CACHE)
  writer = subprocess.Popen([sys.executable, '-c', _WRITER, str(tmp_path)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  deadline = time.time() + HANG_S
  try:
    while time.time() < deadline:
      names = [p.name for p in root.iterdir()] if root.exists() else []
      if '2' in names and any('orbax-checkpoint-tmp' in n for n in names):
        break
      time.sleep(0.001)
    writer.send_signal(signal.SIGKILL)
  finally:
    writer.wait()
  assert time.time() < deadline, 'the writer never got to step 3'
  assert any('orbax-checkpoint-tmp' in p.name for p in root.iterdir())

  ck = Checkpointer(str(tmp_path))
  target = {'w': jax.ShapeDtypeStruct((4, 1024, 1024), jnp.float32)}
  restored, step = ck.restore_latest(target)
  assert step >= 2 and step == max(steps_on_disk(root))
  assert np.all(np.asarray(restored['w']) == step)
  ck.close()
  assert not any('orbax-checkpoint-tmp' in p.name for p in root.iterdir())

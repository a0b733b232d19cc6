"""A workdir that is torn, a file, or read-only: clear errors, and nothing is lost."""
import errno
import json
import logging
import os
import shutil
import subprocess
import types

import pytest

from seqlab import train
from seqlab import workdir as workdir_lib
from conftest import load_config, run_module, signal_when

# chmod does not stop root from writing: those tests have a root-proof twin beside them.
needs_non_root = pytest.mark.skipif(os.geteuid() == 0, reason='root ignores chmod')


def _quick(steps: int):
  config = load_config('adding')
  config.train.steps, config.train.log_every = steps, 2
  config.train.eval_every = config.train.checkpoint_every = 2
  return config


@pytest.fixture(scope='module')
def finished_run(tmp_path_factory):
  """A finished 4-step run of adding.py:quick (copy it before changing it)."""
  workdir = str(tmp_path_factory.mktemp('run') / 'adding')
  train.train_and_evaluate(_quick(4), workdir)
  return workdir


def _copy(run: str, tmp_path) -> str:
  workdir = str(tmp_path / 'run')
  shutil.copytree(run, workdir)
  return workdir


@pytest.fixture
def read_only():
  """Makes directories read-only for the test, writable again after it."""
  paths = []

  def make(path):
    os.chmod(path, 0o555)
    paths.append(path)

  yield make
  for path in paths:
    os.chmod(path, 0o755)


# --- metrics.jsonl cut short -----------------------------------------------------------


def test_torn_last_metrics_line_is_skipped_and_the_run_resumes(finished_run, tmp_path,
                                                                 caplog):
  """A crash or a full disk in the middle of a write leaves half a row at the end of
  metrics.jsonl: it is skipped with a warning, and the resumed run drops it, so that
  the rows it appends do not glue onto it."""
  workdir = _copy(finished_run, tmp_path)
  path = os.path.join(workdir, 'metrics.jsonl')
  before = workdir_lib.read_metrics(workdir)
  with open(path, 'a') as f:
    f.write('{"step": 41, "split": "tr')
  with caplog.at_level(logging.WARNING):
    assert workdir_lib.read_metrics(workdir) == before
  assert any(path in r.getMessage() and 'last line' in r.getMessage() for r in caplog.records)

  assert train.train_and_evaluate(_quick(6), workdir)  # resumes at step 4, finishes
  with open(path) as f:
    rows = [json.loads(line) for line in f]  # every line a row: the torn one is gone
  assert [r['step'] for r in rows if r['split'] == 'train'] == [2, 4, 6]
  assert rows == workdir_lib.read_metrics(workdir)


def test_a_broken_line_before_the_last_is_an_error_naming_it(tmp_path):
  good = json.dumps({'step': 2, 'split': 'train', 'loss': 1.0})
  (tmp_path / 'metrics.jsonl').write_text(f'{good}\n{{"step": 4, "spl\n{good}\n')
  with pytest.raises(workdir_lib.WorkdirError,
                     match=r'metrics.jsonl, line 2: not a JSON row .*repair or delete'):
    workdir_lib.read_metrics(str(tmp_path))


# --- A workdir that cannot be written ----------------------------------------------------


def test_prepare_names_a_workdir_that_is_a_file(tmp_path):
  config = _quick(4)
  file = tmp_path / 'file'
  file.write_text('not a directory')
  with pytest.raises(workdir_lib.WorkdirError,
                     match=f'{file} is a file, not a directory; give another --workdir'):
    workdir_lib.prepare(str(file), config)
  with pytest.raises(workdir_lib.WorkdirError,
                     match=f'cannot create {file}/run: {file} is a file, not a directory'):
    workdir_lib.prepare(str(file / 'run'), config)
  (tmp_path / 'run' / 'config.json.tmp').mkdir(parents=True)  # a write fails, even as root
  with pytest.raises(workdir_lib.WorkdirError, match='cannot write to .*config.json.tmp'):
    workdir_lib.prepare(str(tmp_path / 'run'), config)


@needs_non_root
def test_prepare_names_a_read_only_workdir(tmp_path, read_only):
  workdir = tmp_path / 'run'
  workdir.mkdir()
  read_only(workdir)
  with pytest.raises(workdir_lib.WorkdirError, match='permission denied.*chmod u.w'):
    workdir_lib.prepare(str(workdir), _quick(4))


def test_run_with_a_workdir_that_is_a_file_exits_2_in_one_line(tmp_path):
  file = tmp_path / 'file'
  file.write_text('not a directory')
  for workdir in (file, file / 'run'):
    proc = run_module('seqlab.run', '--config', 'experiments/adding.py:quick', '--workdir',
                      str(workdir))
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert 'Traceback' not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith('seqlab: ') and f'{file} is a file, not a directory' in last


# --- Tools that write beside a run --------------------------------------------------------


def _check_evaluate_prints_then_warns(workdir):
  proc = run_module('seqlab.evaluate', '--workdir', workdir)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert json.loads(proc.stdout)['step'] == 4 and 'mse' in json.loads(proc.stdout)
  assert 'Traceback' not in proc.stderr
  assert proc.stderr.strip().splitlines()[-1].startswith(
      f'seqlab: warning: cannot write {workdir}/eval_best.json')


def test_evaluate_prints_the_metrics_when_it_cannot_save_them(finished_run, tmp_path):
  workdir = _copy(finished_run, tmp_path)
  os.mkdir(os.path.join(workdir, 'eval_best.json'))  # unwritable, even as root
  _check_evaluate_prints_then_warns(workdir)


@needs_non_root
def test_evaluate_prints_the_metrics_of_a_read_only_workdir(finished_run, tmp_path,
                                                            read_only):
  workdir = _copy(finished_run, tmp_path)
  read_only(workdir)
  _check_evaluate_prints_then_warns(workdir)
  assert not os.path.exists(os.path.join(workdir, 'eval_best.json'))


def _check_diagnose_prints_then_fails(out):
  proc = run_module('seqlab.diagnose', '--cells', 'rnn', '--length', '5', '--hidden', '4',
                    '--out', out)
  assert proc.returncode == 2, proc.stderr[-3000:]
  assert 'rnn: |dL/dh_0| / |dL/dh_T-1| = ' in proc.stdout  # printed before the write
  assert 'Traceback' not in proc.stderr
  last = proc.stderr.strip().splitlines()[-1]
  assert last.startswith(f'seqlab: cannot write {out} (') and 'give a writable --out' in last
  return last


def test_diagnose_prints_the_ratios_when_it_cannot_write_the_picture(tmp_path):
  file = tmp_path / 'file'
  file.write_text('not a directory')
  last = _check_diagnose_prints_then_fails(str(file / 'v.png'))
  assert f'{file} is a file, not a directory' in last


@needs_non_root
def test_diagnose_in_a_read_only_directory(tmp_path, read_only):
  read_only(tmp_path)
  out = tmp_path / 'v.png'
  _check_diagnose_prints_then_fails(str(out))


def test_evaluate_without_checkpoints_is_one_line_and_writes_nothing(finished_run, tmp_path):
  """Restoring only (evaluate, sample) opens the checkpoints read-only: no directories
  made, and no orbax thread left to print a traceback at exit."""
  workdir = tmp_path / 'run'
  workdir.mkdir()
  shutil.copy(os.path.join(finished_run, 'config.json'), workdir)
  proc = run_module('seqlab.evaluate', '--workdir', str(workdir))
  assert proc.returncode == 2 and 'no restorable checkpoint' in proc.stderr
  assert 'Traceback' not in proc.stderr, proc.stderr[-2000:]
  assert sorted(os.listdir(workdir)) == ['config.json']


def test_a_second_run_on_a_busy_workdir_is_refused(tmp_path):
  """While one run trains in a workdir, another on it exits 2 naming the holder; the
  first is untouched and resumes its own way."""
  workdir = str(tmp_path / 'run')
  args = ['--config', 'experiments/adding.py:quick', '--workdir', workdir,
          '--config.train.steps=100000', '--config.train.log_every=1']
  second = []

  def ready():
    if workdir_lib.read_metrics(workdir) and not second:
      second.append(run_module('seqlab.run', *args))
    return bool(second)

  first = signal_when('seqlab.run', args, ready)
  assert first.returncode == 0, first.stderr[-2000:]  # SIGTERM: saved, exit 0
  assert second[0].returncode == 2, second[0].stderr[-2000:]
  assert 'is in use by a run (pid' in second[0].stderr
  assert 'Traceback' not in second[0].stderr


def test_a_filesystem_without_locks_warns_and_goes_on(tmp_path, monkeypatch, caplog):
  def no_locks(*args):
    raise OSError(37, 'No locks available')
  monkeypatch.setattr(workdir_lib.fcntl, 'flock', no_locks)
  with caplog.at_level(logging.WARNING):
    with workdir_lib.lock(str(tmp_path / 'run')):
      pass
  assert 'nothing keeps a second run off it' in caplog.text


def test_a_failure_under_the_lock_releases_it_and_removes_its_file(tmp_path):
  """Issue 23: whatever fails after the lock is taken leaves no lock behind (flock is
  per open file, so a second ``lock`` in this process is a second run)."""
  workdir = str(tmp_path / 'run')
  with pytest.raises(RuntimeError, match='boom'):
    with workdir_lib.lock(workdir):
      with pytest.raises(workdir_lib.WorkdirError, match=r'is in use by a run \(pid'):
        with workdir_lib.lock(workdir):
          pass
      raise RuntimeError('boom')
  assert not os.path.exists(os.path.join(workdir, '.lock'))
  with workdir_lib.lock(workdir):
    assert open(os.path.join(workdir, '.lock')).read() == f'pid {os.getpid()} on {os.uname().nodename}'


def test_a_lock_file_removed_while_waiting_is_not_taken(tmp_path, monkeypatch):
  """A run that opened .lock just before its holder removed it locks the new file, not
  the removed one (two runs would hold 'the' lock otherwise)."""
  workdir = str(tmp_path / 'run')
  os.makedirs(workdir)
  path = os.path.join(workdir, '.lock')
  real_flock, removed = workdir_lib.fcntl.flock, []

  def flock_after_the_holder_left(f, op):
    if not removed:  # the holder releases between our open and our flock
      removed.append(path)
      os.remove(path)
    return real_flock(f, op)

  monkeypatch.setattr(workdir_lib.fcntl, 'flock', flock_after_the_holder_left)
  with workdir_lib.lock(workdir):
    assert removed
    with pytest.raises(workdir_lib.WorkdirError, match='is in use by a run'):
      with workdir_lib.lock(workdir):  # a third run opens the file now at the path
        pass


def test_a_read_only_filesystem_is_named_instead_of_chmod(tmp_path, monkeypatch):
  """EROFS: chmod cannot help on a read-only mount, so the message says what it is."""
  message = workdir_lib.describe_os_error(
      str(tmp_path / 'run'), OSError(errno.EROFS, 'Read-only file system', str(tmp_path)))
  assert 'the filesystem is read-only' in message and 'chmod' not in message
  workdir = tmp_path / 'run'
  workdir.mkdir()
  monkeypatch.setattr(workdir_lib.os, 'access', lambda *a: False)
  monkeypatch.setattr(workdir_lib.os, 'statvfs',
                      lambda p: types.SimpleNamespace(f_flag=os.ST_RDONLY))
  with pytest.raises(workdir_lib.WorkdirError, match='the filesystem is read-only') as e:
    workdir_lib.ensure_dir(str(workdir))
  assert 'chmod' not in str(e.value)


@pytest.fixture
def read_only_mount(tmp_path):
  """A real read-only filesystem (tmpfs mounted ro), where this machine allows mounts."""
  path = tmp_path / 'ro'
  path.mkdir()
  proc = subprocess.run(['mount', '-t', 'tmpfs', '-o', 'ro,size=1m', 'tmpfs', str(path)],
                        capture_output=True, text=True)
  if proc.returncode:
    pytest.skip(f'cannot mount a read-only tmpfs here: {proc.stderr.strip()}')
  yield path
  subprocess.run(['umount', str(path)], check=True)


def test_a_run_on_a_read_only_mount_says_so(read_only_mount):
  for workdir in (read_only_mount, read_only_mount / 'run'):  # the mount, and under it
    proc = run_module('seqlab.run', '--config', 'experiments/adding.py:quick',
                      '--workdir', str(workdir))
    assert proc.returncode == 2, proc.stderr[-2000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith('seqlab: ') and 'the filesystem is read-only' in last, last
    assert 'chmod' not in proc.stderr and 'Traceback' not in proc.stderr

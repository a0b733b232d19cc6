"""What a run writes beside its checkpoints: config, run info, metrics, progress."""
import contextlib
import datetime
import errno
import fcntl
import importlib.metadata
import json
import logging as logging_std
import math
import os
import platform
import subprocess
import sys
import time

from absl import logging
import jax
import numpy as np

from seqlab import config as config_lib

PACKAGES = ('seqlab', 'jax', 'jaxlib', 'flax', 'optax', 'orbax-checkpoint', 'ml-collections',
            'numpy')


class _OnlySeqlabInfo(logging_std.Filter):
  """Drops other libraries' INFO records (orbax logs every save); keeps warnings."""
  _ours = os.path.dirname(os.path.abspath(__file__))

  def filter(self, record):
    return record.levelno >= logging_std.WARNING or record.pathname.startswith(self._ours)


def quiet_logging() -> None:
  """INFO logging for seqlab's own lines, warnings and errors from everything."""
  logging.set_verbosity(logging.INFO)
  logging.get_absl_handler().addFilter(_OnlySeqlabInfo())


def _git_commit() -> str | None:
  here = os.path.dirname(os.path.abspath(__file__))
  try:
    out = subprocess.run(['git', 'rev-parse', 'HEAD'], cwd=here, capture_output=True,
                         text=True, timeout=5, check=True)
    return out.stdout.strip() or None
  except (OSError, subprocess.SubprocessError):
    return None


def _versions() -> dict:
  versions = {}
  for name in PACKAGES:
    try:
      versions[name] = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
      versions[name] = None
  return versions


class WorkdirError(config_lib.ConfigError):
  """A workdir that cannot be created or written: a file, under a file, read-only, full.

  A ``ConfigError`` (and so a ``ValueError``), so that the tools that report a bad
  config in one line (``seqlab.run``, ``seqlab.sweep``) report this one too.
  """


class WriteError(RuntimeError):
  """A run's file could not be written mid-run (a full disk, a lost mount, changed
  permissions): a checkpoint (``checkpoint.CheckpointWriteError``), metrics.jsonl or
  the TensorBoard events. Its message names the file and the fix; ``seqlab.run``
  prints it in one line and exits 1, with the checkpoints written before kept.
  """


def _write_failed(path: str, error: OSError) -> WriteError:
  return WriteError(f'writing {path} failed ({error.strerror or error}); the checkpoints '
                    'written before it are kept. Free disk space or fix the permissions, '
                    'then run the same command to resume.')


def file_in_path(path: str) -> str | None:
  """The first part of ``path`` that exists and is not a directory, if any."""
  parts = os.path.abspath(path).split(os.sep)
  for i in range(2, len(parts) + 1):
    prefix = os.sep.join(parts[:i])
    if os.path.lexists(prefix) and not os.path.isdir(prefix):
      return prefix
  return None


def describe_os_error(path: str, error: OSError) -> str:
  """One line on why directory ``path`` cannot be created or written, with the fix."""
  blocker = file_in_path(path)
  if blocker == os.path.abspath(path):
    return f'{path} is a file, not a directory; give another --workdir'
  if blocker:
    return f'cannot create {path}: {blocker} is a file, not a directory; give another --workdir'
  where = error.filename or path
  if error.errno == errno.EROFS:  # chmod cannot help on a read-only mount
    return (f'cannot write to {where}: the filesystem is read-only; give a --workdir on '
            'a writable filesystem')
  if isinstance(error, PermissionError):
    return (f'cannot write to {where} (permission denied); make {path} writable '
            '(chmod u+w) or give another --workdir')
  return f'cannot write to {where} ({error.strerror or error}); give another --workdir'


def ensure_dir(path: str) -> None:
  """Creates directory ``path`` if needed and checks that it is writable.

  Raises WorkdirError (one line that names the fix) when it cannot be.
  """
  if '://' in path:
    raise WorkdirError(f'{path} is a URL; runs write their config and metrics as plain '
                       'files, so give a local or mounted path (a gs:// bucket mounted with '
                       'gcsfuse, say /gcs/bucket/runs/NAME)')
  try:
    os.makedirs(path, exist_ok=True)
  except OSError as e:
    raise WorkdirError(describe_os_error(path, e)) from None
  if not os.access(path, os.W_OK | os.X_OK):
    read_only = os.statvfs(path).f_flag & os.ST_RDONLY
    error = (OSError(errno.EROFS, 'Read-only file system', path) if read_only else
             PermissionError(errno.EACCES, 'Permission denied', path))
    raise WorkdirError(describe_os_error(path, error))


@contextlib.contextmanager
def lock(workdir: str):
  """Holds ``workdir/.lock`` while a run writes the workdir: a second run started on
  the same workdir gets a WorkdirError instead of interleaving its metrics and
  checkpoints. Process 0 locks (on many hosts the others share its workdir) and
  tells the others, so that all of them refuse or none. On the way out, an exception
  included, the lock is released and its file removed; a process killed outright
  leaves the file, but the OS releases its lock."""
  ensure_dir(workdir)
  path = os.path.join(workdir, '.lock')
  f, holder = _acquire(path) if jax.process_index() == 0 else (None, None)
  try:
    if f is not None:
      f.write(f'pid {os.getpid()} on {platform.node()}')
      f.flush()
    busy = holder is not None
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
      busy = bool(multihost_utils.broadcast_one_to_all(np.int32(busy)))
    if busy:
      raise WorkdirError(f'{workdir} is in use by a run ({holder or "see process 0"}); '
                         'wait for it to end, or give another --workdir')
    yield
  finally:
    if f is not None:
      with contextlib.suppress(OSError):
        os.remove(path)  # while still locked: whoever opened it meanwhile tries again
      fcntl.flock(f, fcntl.LOCK_UN)
      f.close()


def _acquire(path: str):
  """(the open, locked, emptied file at ``path``, None); (None, its holder) when another
  process holds it; (None, None) on a filesystem without locks, with a warning."""
  while True:
    f = open(path, 'a+')
    try:
      fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      f.seek(0)
      holder = f.read().strip() or 'another process'
      f.close()
      return None, holder
    except OSError as e:  # a filesystem without locks (NFS without lockd, Lustre noflock)
      f.close()
      logging.warning('cannot lock %s (%s); nothing keeps a second run off it', path, e)
      return None, None
    try:
      current = os.stat(path).st_ino == os.fstat(f.fileno()).st_ino
    except FileNotFoundError:
      current = False
    if current:  # not removed by the holder that released it while we opened it
      f.seek(0)
      f.truncate()
      return f, None
    f.close()


# Keys whose change a resumed run takes in its stride: more steps, another cadence of
# logs, evals and checkpoints. Any other change makes a run's results another config's.
RESUMABLE = ('train.steps', 'train.log_every', 'train.eval_every', 'train.checkpoint_every',
             'train.keep_checkpoints')


def config_changes(workdir: str, config, ignore=()) -> list[str]:
  """How ``config`` differs from the one a run in ``workdir`` was started with
  ('key: old -> new'); [] if the same or no run is there.

  The saved config is first brought to today's schema (``config_lib.upgrade``: keys
  that moved since), then both are compared as ``config_lib.resolved``: keys the saved
  config lacks (added to seqlab since) and 'auto' values equal to what the saved ones
  meant do not count, nor the keys in ``ignore`` (e.g. ``RESUMABLE``).
  """
  path = os.path.join(workdir, 'config.json')
  if not os.path.exists(path):
    return []
  try:
    with open(path) as f:
      saved = json.load(f)
  except (OSError, ValueError) as e:
    raise WorkdirError(f'cannot read {path} ({e}); repair it, or move {workdir} away to '
                       'start over') from None
  new = config_lib.resolved(json.loads(config.to_json_best_effort()))
  old = config_lib.resolved(config_lib.upgrade(saved))
  changes = flat_diff(_with_defaults(old, new), new)
  return [c for c in changes if c.partition(':')[0] not in ignore]


def _with_defaults(old: dict, new: dict) -> dict:
  """``old`` with the keys only ``new`` has taken from ``new``."""
  out = dict(old)
  for k, v in new.items():
    if k not in out:
      out[k] = v
    elif isinstance(out[k], dict) and isinstance(v, dict):
      out[k] = _with_defaults(out[k], v)
  return out


def show_changes(changes: list[str], limit: int = 4) -> str:
  """The first ``limit`` of ``config_changes``, '; '-joined, and how many more."""
  more = f' and {len(changes) - limit} more' if len(changes) > limit else ''
  return '; '.join(changes[:limit]) + more


def flat_diff(old: dict, new: dict, prefix='') -> list[str]:
  """Keys whose values differ between two nested dicts, as 'a.b: old -> new'."""
  out = []
  for k in sorted(set(old) | set(new)):
    a, b = old.get(k), new.get(k)
    if isinstance(a, dict) and isinstance(b, dict):
      out += flat_diff(a, b, f'{prefix}{k}.')
    elif a != b:
      out.append(f'{prefix}{k}: {a!r} -> {b!r}')
  return out


def prepare(workdir: str, config) -> None:
  """Creates ``workdir`` and writes config.json (the resolved config) and run_info.json.

  On many hosts only process 0 writes (the workdir is shared storage). Raises
  WorkdirError when ``workdir`` cannot be created or written.
  """
  ensure_dir(workdir)
  if jax.process_index() != 0:
    return
  try:
    _write_run_files(workdir, config)
  except OSError as e:
    raise WorkdirError(describe_os_error(workdir, e)) from None


def _write_run_files(workdir: str, config) -> None:
  """config.json (warning when a resumed run's config changed) and run_info.json."""
  changed = config_changes(workdir, config)
  if changed:
    logging.warning('Resuming %s with a changed config: %s', workdir, '; '.join(changed))
  _write_json(os.path.join(workdir, 'config.json'), json.loads(config.to_json_best_effort()))
  _write_json(os.path.join(workdir, 'run_info.json'), {
      'command': sys.argv,
      'seed': config.seed,
      'started': datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds'),
      'git_commit': _git_commit(),
      'versions': _versions(),
      'python': platform.python_version(),
      'host': platform.node(),
      'backend': jax.default_backend(),
      'devices': [str(d) for d in jax.devices()],
  })


def _write_json(path, obj):
  tmp = path + '.tmp'
  with open(tmp, 'w') as f:
    json.dump(obj, f, indent=2, sort_keys=True)
  os.replace(tmp, path)


def read_metrics(workdir: str) -> list[dict]:
  """The rows of ``workdir/metrics.jsonl``.

  A last line cut short (a crash or a full disk in the middle of a write) is skipped
  with a warning; ``MetricWriter`` drops it when the run resumes. An unreadable line
  before the last raises WorkdirError naming the file and the line.
  """
  path = os.path.join(workdir, 'metrics.jsonl')
  if not os.path.exists(path):
    return []
  with open(path, errors='replace') as f:
    lines = [(n, line) for n, line in enumerate(f, 1) if line.strip()]
  rows = []
  for n, line in lines:
    row, problem = _parse_row(line)
    if problem is None:
      rows.append(row)
    elif n == lines[-1][0]:
      logging.warning('%s: skipping its last line (%d), cut short by an interrupted write: '
                      '%.60r', path, n, line)
    else:
      raise WorkdirError(f'{path}, line {n}: {problem}; repair or delete that line')
  return rows


def logged_test(workdir: str, step: int | None = None) -> dict[str, dict]:
  """The test rows a run logged at its final ``step`` (None: at any step, the latest) by
  checkpoint ('last', 'best'; ``train.final_test``): a finished run has both, and a
  rerun reads them rather than looking at the test set again."""
  return {r['checkpoint']: r for r in read_metrics(workdir)
          if r['split'] == 'test' and step in (None, r['step']) and 'checkpoint' in r}


def _parse_row(line: str) -> tuple[dict | None, str | None]:
  """(the row of one metrics.jsonl line, None) or (None, what is wrong with it)."""
  try:
    row = json.loads(line)
  except json.JSONDecodeError as e:
    return None, f'not a JSON row ({e.msg})'
  if not isinstance(row, dict) or 'step' not in row or 'split' not in row:
    return None, 'not a row of metrics (no step and split)'
  return row, None


class MetricWriter:
  """Appends rows to metrics.jsonl and a TensorBoard event file.

  On resume, rows logged after the restored step (written before an interruption
  but not covered by a checkpoint) are dropped, so the file reads as one run. On many
  hosts only process 0 writes files (every process prints its eval rows, through
  ``Progress.eval``). Both files are written in the caller's thread, so a failed write
  (a full disk) raises WriteError at once rather than ending a background thread and
  blocking the run.
  """

  def __init__(self, workdir: str, resume_step: int = 0):
    self.path = os.path.join(workdir, 'metrics.jsonl')
    self.primary = jax.process_index() == 0
    if not self.primary:
      return
    kept = [r for r in read_metrics(workdir) if r['step'] <= resume_step]
    tmp = self.path + '.tmp'  # replaced at once: a crash here keeps the old rows
    self.tensorboard = os.path.join(workdir, 'tensorboard')
    # pylint: disable=g-import-not-at-top
    from tensorboardX import event_file_writer  # a second to import: only when writing
    from tensorboardX.proto import event_pb2, summary_pb2
    # pylint: enable=g-import-not-at-top
    self._event, self._summary = event_pb2.Event, summary_pb2.Summary
    try:
      with open(tmp, 'w') as f:
        f.writelines(json.dumps(r) + '\n' for r in kept)
      os.replace(tmp, self.path)
      self._file = open(self.path, 'a')
      os.makedirs(self.tensorboard, exist_ok=True)
      # Named by the second and host, as TensorBoard's are, and by the nanosecond too:
      # a resume within the same second would otherwise truncate the earlier file.
      self._events = event_file_writer.EventsWriter(os.path.join(self.tensorboard, 'events'),
                                                    filename_suffix=f'.{time.time_ns()}')
    except OSError as e:
      raise _write_failed(e.filename or self.path, e) from None

  def write(self, step: int, split: str, metrics: dict) -> None:
    """One row: metrics as floats; a Python int (a test row's 'checkpoint_step') and a
    string (its 'checkpoint', which names the TensorBoard tags' group 'test_best/...')
    as they are."""
    row = {'step': int(step), 'split': split}
    row.update({k: v if isinstance(v, (str, int)) else float(v) for k, v in metrics.items()})
    if not self.primary:
      return
    group = '_'.join([split] + [v for v in metrics.values() if isinstance(v, str)])
    scalars = self._summary(value=[
        self._summary.Value(tag=f'{group}/{k}', simple_value=v)
        for k, v in row.items() if k not in ('step', 'split') and not isinstance(v, str)])
    path = self.path
    try:
      self._file.write(json.dumps(row) + '\n')
      self._file.flush()
      path = self.tensorboard
      self._events.write_event(self._event(wall_time=time.time(), step=row['step'],
                                           summary=scalars))
      self._events.flush()
    except OSError as e:
      raise _write_failed(path, e) from None

  def close(self) -> None:
    """Closes the files; again is a no-op."""
    if not self.primary or self._file.closed:
      return
    try:
      self._file.close()
      self._events.close()
    except OSError as e:
      raise _write_failed(self.path, e) from None


class Progress:
  """What a run or a sweep prints while it works: a live line on a terminal (plain
  lines otherwise), and lines of their own. Every such line goes through here:
  ``update`` (a run's steps), ``eval`` (an eval row, naming the sweep point it
  belongs to), ``show`` (any live line: a sweep's summary) and ``message``.

  ``every``: off a terminal, at most one ``show`` line per ``every`` seconds (a log
  file gets a sweep's summary each minute, not each poll).
  """

  def __init__(self, total: int, start: int, stream=None, every: float = 0.0):
    self.total, self.start, self.every = total, start, every
    self.stream = stream or sys.stderr
    self.tty = self.stream.isatty()
    self.t0 = time.perf_counter()
    self._shown = -math.inf

  def update(self, step: int, loss: float) -> None:
    elapsed = time.perf_counter() - self.t0
    rate = (step - self.start) / max(elapsed, 1e-9)
    eta = (self.total - step) / max(rate, 1e-9)
    self.show(f'step {step}/{self.total}  loss {loss:.4g}  {rate:.2f} steps/s  '
              f'ETA {datetime.timedelta(seconds=int(eta))}', step / self.total)

  def show(self, line: str, fraction: float | None = None, force: bool = False) -> None:
    """``line`` as the live line (after a bar ``fraction`` full, if given); off a
    terminal printed if ``every`` seconds have passed, or ``force``."""
    if self.tty:
      width = 30
      done = int(width * min(max(fraction, 0.0), 1.0)) if fraction is not None else 0
      bar = f'[{"#" * done}{"." * (width - done)}] ' if fraction is not None else ''
      self.stream.write(f'\r{bar}{line}\033[K')
      self.stream.flush()
    elif force or time.perf_counter() - self._shown >= self.every:
      self._shown = time.perf_counter()
      print(line, file=self.stream, flush=True)

  def eval(self, step: int, metrics: dict, point: str = '') -> None:
    """'step 20 eval [seed=1] loss=0.266, ...': ``point`` names the sweep point (in a
    population several points evaluate at each step)."""
    where = f' [{point}]' if point else ''
    self.message(f'step {step} eval{where} ' + ', '.join(f'{k}={v:.5g}'
                                                         for k, v in metrics.items()))

  def message(self, line: str) -> None:
    """``line`` on a line of its own (on a terminal, in place of the live line, which
    the next ``show`` draws again)."""
    if self.tty:
      self.stream.write('\r\033[K')
    print(line, file=self.stream, flush=True)

  def close(self) -> None:
    if self.tty:
      self.stream.write('\n')
      self.stream.flush()

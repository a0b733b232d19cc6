"""What a run writes beside its checkpoints: config, run info, metrics, progress."""
import contextlib
import datetime
import fcntl
import importlib.metadata
import json
import logging as logging_std
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
    raise WorkdirError(describe_os_error(path, PermissionError(13, 'Permission denied', path)))


@contextlib.contextmanager
def lock(workdir: str):
  """Holds ``workdir/.lock`` while a run writes the workdir: a second run started on
  the same workdir gets a WorkdirError instead of interleaving its metrics and
  checkpoints. Process 0 locks (on many hosts the others share its workdir) and
  tells the others, so that all of them refuse or none."""
  ensure_dir(workdir)
  path = os.path.join(workdir, '.lock')
  f, holder, locked = None, None, False
  if jax.process_index() == 0:
    f = open(path, 'a+')
    try:
      fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      f.seek(0)
      holder = f.read().strip() or 'another process'
    except OSError as e:  # a filesystem without locks (NFS without lockd, Lustre noflock)
      logging.warning('cannot lock %s (%s); nothing keeps a second run off it', path, e)
    else:
      locked = True
      f.seek(0)
      f.truncate()
      f.write(f'pid {os.getpid()} on {platform.node()}')
      f.flush()
  busy = holder is not None
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    busy = bool(multihost_utils.broadcast_one_to_all(np.int32(busy)))
  try:
    if busy:
      raise WorkdirError(f'{workdir} is in use by a run ({holder or "see process 0"}); '
                         'wait for it to end, or give another --workdir')
    yield
  finally:
    if locked:
      fcntl.flock(f, fcntl.LOCK_UN)
    if f is not None:
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
  hosts only process 0 writes files; the others log eval rows only. Both files are
  written in the caller's thread, so a failed write (a full disk) raises WriteError
  at once rather than ending a background thread and blocking the run.
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
    row = {'step': int(step), 'split': split}
    row.update({k: float(v) for k, v in metrics.items()})
    if split == 'eval':
      logging.info('step %d eval %s', step, ', '.join(f'{k}={v:.5g}' for k, v in metrics.items()))
    if not self.primary:
      return
    scalars = self._summary(value=[
        self._summary.Value(tag=f'{split}/{k}', simple_value=v)
        for k, v in row.items() if k not in ('step', 'split')])
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
  """A live progress line on a terminal; plain log lines otherwise."""

  def __init__(self, total: int, start: int, stream=None):
    self.total, self.start = total, start
    self.stream = stream or sys.stderr
    self.tty = self.stream.isatty()
    self.t0 = time.perf_counter()

  def update(self, step: int, loss: float) -> None:
    elapsed = time.perf_counter() - self.t0
    rate = (step - self.start) / max(elapsed, 1e-9)
    eta = (self.total - step) / max(rate, 1e-9)
    line = (f'step {step}/{self.total}  loss {loss:.4g}  {rate:.2f} steps/s  '
            f'ETA {datetime.timedelta(seconds=int(eta))}')
    if self.tty:
      width = 30
      done = int(width * step / self.total)
      self.stream.write(f'\r[{"#" * done}{"." * (width - done)}] {line}\033[K')
      self.stream.flush()
    else:
      print(line, file=self.stream, flush=True)

  def close(self) -> None:
    if self.tty:
      self.stream.write('\n')
      self.stream.flush()

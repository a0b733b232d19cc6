"""orbax: restore-or-init and save, nothing else.

Two orbax CheckpointManagers under ``workdir``:
  checkpoints/<step>/   the last ``keep`` steps, written asynchronously by ``save``
  best/<step>/          the single best step by an eval metric, written by ``save_best``

A state is any pytree of jax arrays, numpy arrays and Python scalars (in seqlab,
``{'step', 'params', 'opt_state', 'rng'}``); NamedTuple nodes such as optax states are
rebuilt from the target you restore into, so restore into ``jax.eval_shape(init)``.

Crash safety is orbax's: a step is written into ``<step>.orbax-checkpoint-tmp-<t>``
and renamed into place only once complete, so a save killed half-way leaves the older
steps untouched; the leftover tmp directory is ignored and removed on the next start.
Every step carries the SHA-256 of its state (``checksum``: each leaf's dtype, shape and
bytes, on the host) in orbax's step metadata, written with the step's commit, after
its data. A restore recomputes it from the restored arrays, so damage that keeps the
files' sizes (bytes overwritten in place) is caught as surely as deleted or truncated
files. A step that fails to restore, fails its checksum or restores non-finite
floats is damaged: training skips it with a warning naming the step and restores the
previous one (``restore_latest``); the tools, which read one named step, refuse it
(``DamagedCheckpointError``). Steps written before checksums existed restore unchecked.
"""
import contextlib
import gc
import hashlib
import logging as std_logging
import math
import os
import sys
import tempfile
import traceback
import warnings

from absl import logging
import jax
from jax.experimental import multihost_utils
import numpy as np
import orbax.checkpoint as ocp

from seqlab import workdir as workdir_lib

BEST_MODES = ('min', 'max')


def _manager(directory, *, keep, async_save, best_fn=None, best_mode='min', read_only=False):
  # Both managers may save the same step at once: on many hosts their barriers need
  # distinct names (orbax keys them by step alone otherwise).
  prefix = os.path.basename(directory.rstrip('/'))
  options = ocp.CheckpointManagerOptions(
      max_to_keep=None if read_only else keep, best_fn=best_fn, best_mode=best_mode,
      save_interval_steps=0 if read_only else 1,  # what orbax sets, with a warning each
      keep_checkpoints_without_metrics=False, enable_async_checkpointing=async_save,
      cleanup_tmp_directories=not read_only, create=not read_only, read_only=read_only,
      multiprocessing_options=ocp.options.MultiprocessingOptions(
          barrier_sync_key_prefix=prefix))
  # One unnamed item with its handler fixed up front: left to itself, orbax infers
  # "one item or many" from the first step directory it reads, and a damaged one
  # would lock the manager into the wrong mode for every older step as well.
  return ocp.CheckpointManager(directory, options=options,
                               item_handlers=ocp.StandardCheckpointHandler())


def _reason(error: Exception) -> str:
  """'Type: first line of the message', cut short: tensorstore errors run to pages."""
  lines = str(error).strip().splitlines()
  text = lines[0] if lines else ''
  text = text.split(' Truncating/padding is disabled')[0]  # orbax's advice: strict=False,
  # which no seqlab user can set (a changed shape is a changed config, refused after this)
  return f'{type(error).__name__}: {text[:300]}'


def _host(leaf) -> np.ndarray:
  """A state leaf as one host array; a leaf split over several hosts is gathered."""
  if isinstance(leaf, jax.Array) and not leaf.is_fully_addressable:
    if leaf.is_fully_replicated:
      return np.asarray(leaf.addressable_data(0))
    return np.asarray(multihost_utils.process_allgather(leaf, tiled=True))
  return np.asarray(leaf)


def checksum(state) -> str:
  """SHA-256 over the leaves of ``state`` in tree order: each one's dtype, shape and
  bytes, copied to the host (the step and rng, i.e. the data position, included).

  Hashes the arrays rather than orbax's files: a restore has the arrays in hand, the
  files' layout is orbax's business, and what is checked is what training gets back.
  SHA-256 runs at about 600 MB/s on one CPU core (a 27 MB state, charlm's LSTM 512
  with Adam, in 46 ms).
  """
  digest = hashlib.sha256()
  for leaf in jax.tree.leaves(state):
    a = np.ascontiguousarray(_host(leaf))
    digest.update(f'{a.dtype.name}{a.shape};'.encode())
    digest.update(a.reshape(-1).view(np.uint8))
  return digest.hexdigest()


class DamagedCheckpointError(ValueError):
  """A checkpoint step that does not restore as it was written."""


def _check_intact(manager, step: int, state) -> None:
  """``DamagedCheckpointError`` when ``state``, just restored from ``step``, differs from
  what was saved (its checksum) or holds a non-finite float (never saved by training)."""
  written = (manager.metadata(step).custom_metadata or {}).get('checksum')
  if written is not None and checksum(state) != written:
    raise DamagedCheckpointError('its contents do not match the checksum written with it '
                                 '(damaged after it was written)')
  for leaf in jax.tree.leaves(state):
    a = _host(leaf)
    if np.issubdtype(a.dtype, np.inexact) and not np.all(np.isfinite(a)):
      raise DamagedCheckpointError('it holds values that are not finite')


def _restore_step(manager, step: int, abstract_state):
  """The state of ``step``, checked by ``_check_intact``."""
  state = manager.restore(step, args=ocp.args.StandardRestore(abstract_state))
  _check_intact(manager, step, state)
  return state


def _restore_newest(manager, abstract_state, fall_back: bool = True):
  """(state, step) from the newest restorable step of ``manager``, and the newer
  steps that failed; (None, failed) when none restores. Without ``fall_back``, a
  newest step that fails raises ``DamagedCheckpointError`` naming it instead."""
  restored, failed, error = None, [], None
  with _quiet_abandoned_reads():
    for step in sorted(manager.all_steps(), reverse=True):
      try:
        restored = _restore_step(manager, step, abstract_state), step
        break
      except Exception as e:  # pylint: disable=broad-except
        # orbax and tensorstore raise anything from FileNotFoundError to ValueError
        # and JSONDecodeError for a damaged step; each one only means "try older".
        failed.append(step)
        if not fall_back:
          error = DamagedCheckpointError(
              f'checkpoint {manager.directory}/{step} is damaged ({_reason(e)}); restore it '
              'from a copy, or move it away to use the step before it')
          break
        logging.warning('checkpoint %s/%d cannot be restored (%s); trying an older one.',
                        manager.directory, step, _reason(e))
    if failed:
      gc.collect()  # the failed attempts' abandoned reads report now, while filtered
  if failed:
    _quiet_read_echoes_from_now_on()  # after the scoped hook is put back
  if error is not None:
    raise error
  return restored, failed


def _read_echo(text: str, tb=None) -> bool:
  """Whether an error is an abandoned read of a failed restore: its text or the
  files of its traceback name orbax or tensorstore."""
  if any(k in text for k in ('Encountered error while reading array index',
                             'is not compatible with the stored shape', 'tensorstore',
                             'TensorStore', 'orbax')):
    return True
  return any('orbax' in f.filename or 'tensorstore' in f.filename
             for f in (traceback.extract_tb(tb) if tb else ()))


def _unraisable_hook_without_echoes(previous_hook, reads: bool = True):
  """``sys.unraisablehook`` passing everything to ``previous_hook`` but the echoes of a
  failed read or write: tensorstore's callbacks into orbax's loop, already closed on
  the first error, for the reads or writes still in flight ("RuntimeError: Event loop
  is closed", with a traceback each, 18-36 of them for one full disk) and, with
  ``reads``, an error naming orbax or tensorstore."""

  def hook(args):
    error = args.exc_value
    closed = isinstance(error, RuntimeError) and str(error) == 'Event loop is closed'
    if not (closed or (reads and _read_echo(str(error)))):
      previous_hook(args)

  return hook


class _DropReadEchoes(std_logging.Filter):
  """asyncio's 'Task/Future/_GatheringFuture exception was never retrieved' for an
  abandoned read (``broad``: any, while a restore runs)."""

  def __init__(self, broad: bool):
    super().__init__()
    self.broad = broad

  def filter(self, record):
    if 'exception was never retrieved' not in record.getMessage():
      return True
    tb = record.exc_info[2] if record.exc_info else None
    return not (self.broad or _read_echo(record.getMessage(), tb))


@contextlib.contextmanager
def _quiet_abandoned_reads():
  """Silences the echoes of failed restores, which are not errors of their own.

  orbax restores in a fresh asyncio loop and closes it at the first failed read; the
  other reads of the damaged (or differently shaped) step, still in flight in
  tensorstore, then call back into the closed loop ("RuntimeError: Event loop is
  closed", through sys.unraisablehook) or are collected unawaited ("Task/Future
  exception was never retrieved", on the 'asyncio' logger), each with a traceback.
  While a restore runs, those two are dropped. After a restore failed, the reads'
  later echoes (collected up to the process's exit: "Exception ignored in:
  <coroutine ...>: Encountered error while reading array index" with pages of
  TensorStore spec, the same asyncio messages, "coroutine ... was never awaited")
  are dropped from then on, but only those that name orbax or tensorstore (and
  "Event loop is closed"). The one-line warning of ``_restore_newest`` already says
  what happened.
  """
  previous_hook = sys.unraisablehook
  broad = _DropReadEchoes(broad=True)
  sys.unraisablehook = _unraisable_hook_without_echoes(previous_hook)
  std_logging.getLogger('asyncio').addFilter(broad)
  try:
    yield
  finally:
    sys.unraisablehook = previous_hook
    std_logging.getLogger('asyncio').removeFilter(broad)


_after_failed_restore = False


def _quiet_read_echoes_from_now_on():
  """The lasting part of ``_quiet_abandoned_reads``, installed once."""
  global _after_failed_restore
  if _after_failed_restore:
    return
  _after_failed_restore = True
  sys.unraisablehook = _unraisable_hook_without_echoes(sys.unraisablehook)
  std_logging.getLogger('asyncio').addFilter(_DropReadEchoes(broad=False))
  warnings.filterwarnings('ignore', message="coroutine '_read_array_index_and_device_put' "
                          'was never awaited', category=RuntimeWarning)


_writing = False


def _quiet_write_echoes():
  """Drops a failed save's callbacks into its closed loop, installed once by the first
  writing ``Checkpointer``: tensorstore's threads report them while the save fails,
  before the main thread hears of it."""
  global _writing
  if not _writing:
    _writing = True
    sys.unraisablehook = _unraisable_hook_without_echoes(sys.unraisablehook, reads=False)


_WRITE_FAILURES = ('Error writing', 'os_error_code', 'No space left', 'File too large',
                   'Permission denied', 'Operation not permitted', 'Read-only file system')


class _DropWriteFailureLogs(std_logging.Filter):
  """orbax's own ERROR logs of a failed save (one per thread, each with a traceback,
  hundreds of lines for one full disk): ``Checkpointer`` raises the failure as one
  ``CheckpointWriteError`` that names it, so these are dropped. So is its warning
  'Given directory is read only' for a read-only ``Checkpointer`` (evaluate, sample,
  diagnose), which asked for just that."""

  def filter(self, record):
    if '/orbax/' not in record.pathname.replace('\\', '/'):
      return True
    if record.levelno == std_logging.WARNING:
      return not record.getMessage().startswith('Given directory is read only')
    if record.levelno < std_logging.ERROR:
      return True
    text = record.getMessage()
    if record.exc_info and record.exc_info[1] is not None:
      text += str(record.exc_info[1])
    return not any(k in text for k in _WRITE_FAILURES)


std_logging.getLogger('absl').addFilter(_DropWriteFailureLogs())


class Checkpointer:
  """Saves and restores training states under ``workdir``.

  Args:
    workdir: the run's directory; checkpoints go to ``workdir/checkpoints`` and
      ``workdir/best``.
    keep: how many of the latest steps to keep in ``checkpoints/``.
    best_metric: the eval metric ``save_best`` ranks by; None disables ``save_best``.
    best_mode: 'min' (a loss) or 'max' (an accuracy).
    async_save: write in a background thread; ``save`` returns once the arrays are
      copied to host memory.
    read_only: for restoring only (evaluate, sample): creates and cleans nothing, so
      no background thread outlives the process and a read-only workdir works; a
      damaged newest step raises ``DamagedCheckpointError`` instead of being skipped.
  """

  def __init__(self, workdir: str, *, keep: int = 3, best_metric: str | None = None,
               best_mode: str = 'min', async_save: bool = True, read_only: bool = False):
    if keep < 1:
      raise ValueError(f'keep={keep} must be >= 1')
    if best_mode not in BEST_MODES:
      raise ValueError(f"best_mode={best_mode!r} must be one of: {', '.join(BEST_MODES)}")
    self._best_metric = best_metric
    self._best_mode = best_mode
    if '://' not in workdir:  # orbax wants absolute local paths; gs://... stays
      workdir = os.path.abspath(workdir)
    self._latest = _manager(f'{workdir}/checkpoints', keep=keep, async_save=async_save,
                            read_only=read_only)
    best_fn = (lambda metrics: metrics[best_metric]) if best_metric else None
    self._best = _manager(f'{workdir}/best', keep=1, async_save=async_save,
                          best_fn=best_fn, best_mode=best_mode, read_only=read_only)
    self._best_value = self._saved_best_value()
    self._superseded = []  # damaged steps newer than the one restore_latest used
    self._fall_back = not read_only  # the tools read the step they name, or refuse
    self._closed = False
    if not read_only:
      _quiet_write_echoes()

  def check_writable(self) -> None:
    """``CheckpointWriteError`` now if ``checkpoints/`` cannot be written, rather than
    at the first save (whose failure leaves orbax's threads waiting)."""
    directory = str(self._latest.directory)
    if '://' in directory:
      return
    try:
      with tempfile.TemporaryFile(dir=directory):
        pass
    except OSError as e:
      raise CheckpointWriteError(
          f'cannot write checkpoints in {directory} ({_reason(e)}); fix the permissions '
          'or give another --workdir') from None

  def _saved_best_value(self) -> float | None:
    step = self._best.best_step() if self._best_metric else None
    metrics = self._best.metrics(step) if step is not None else None
    if metrics is None:
      return None
    if self._best_metric not in metrics:
      raise ValueError(f'best_metric={self._best_metric!r}, but {self._best.directory} '
                       f"was ranked by: {', '.join(sorted(metrics))}")
    return float(metrics[self._best_metric])

  def latest_step(self) -> int | None:
    """The newest step in ``checkpoints/`` (written or being written) but those that
    ``restore_latest`` found damaged, or None."""
    steps = [s for s in self._latest.all_steps() if s not in self._superseded]
    return max(steps, default=None)

  def restore_latest(self, abstract_state):
    """Restores the newest restorable step of ``checkpoints/``.

    Args:
      abstract_state: the target pytree: jax.ShapeDtypeStruct leaves (e.g. from
        ``jax.eval_shape``) or arrays; restored leaves take their dtypes, shardings
        and the pytree structure (NamedTuples included) from it. Leaves saved as
        numpy arrays or Python scalars come back as numpy arrays (0-d for scalars)
        into a ShapeDtypeStruct, and as they were into a leaf of their own type.

    Returns:
      (state, step), or None when no step restores. Damaged steps (unreadable, not
      matching their checksum, not finite) are skipped with a warning naming the step
      and the reason; they are deleted by the next ``save``, which continues the run
      from the step restored here. When none restores, none is deleted
      (``seqlab.train`` then refuses to start over them). Read-only: a damaged newest
      step raises ``DamagedCheckpointError``.
    """
    restored, failed = _restore_newest(self._latest, abstract_state, self._fall_back)
    self._superseded = failed if restored is not None else []
    return restored

  def restore_best(self, abstract_state):
    """(state, step) from ``best/``, or ``restore_latest`` when it has none to give."""
    restored, _ = _restore_newest(self._best, abstract_state, self._fall_back)
    if restored is None:
      logging.info('no restorable checkpoint in %s; using the latest instead.',
                   self._best.directory)
      return self.restore_latest(abstract_state)
    return restored

  def save(self, step: int, state, *, force: bool = False) -> None:
    """Starts writing ``state`` as ``checkpoints/<step>`` and returns.

    A step that already exists is left as it is (no-op). Without ``force`` a step
    older than the newest one on disk is not written either (orbax's rule); with it,
    it is. The oldest steps beyond ``keep`` are deleted once the write completes.
    """
    for bad in self._superseded:
      logging.warning('deleting damaged checkpoint %s/%d, superseded by this run.',
                      self._latest.directory, bad)
      self._latest.delete(bad)
    self._superseded = []
    if step in self._latest.all_steps():
      return
    with self._write_errors():  # orbax reports the previous async save's failure here
      saved = self._latest.save(step, args=ocp.args.StandardSave(state), force=force,
                                custom_metadata={'checksum': checksum(state)})
    if not saved:
      logging.warning('step %d not saved: it is older than the latest checkpoint %s '
                      '(pass force=True to save it anyway).', step, self.latest_step())

  def save_best(self, step: int, state, metrics: dict[str, float]) -> None:
    """Writes ``state`` as ``best/<step>`` if ``metrics[best_metric]`` beats every
    earlier one (strictly; NaN never does), replacing the previous best."""
    if self._best_metric is None:
      raise ValueError('save_best needs Checkpointer(best_metric=...)')
    if self._best_metric not in metrics:
      raise ValueError(f'best_metric={self._best_metric!r} is not among the metrics: '
                       f"{', '.join(sorted(metrics))}")
    metrics = {k: float(v) for k, v in metrics.items()}
    value = metrics[self._best_metric]
    if not self._improves(value) or step in self._best.all_steps():
      return
    with self._write_errors():
      self._best.save(step, args=ocp.args.StandardSave(state), metrics=metrics, force=True,
                      custom_metadata={'checksum': checksum(state)})
    self._best_value = value

  def _improves(self, value: float) -> bool:
    if math.isnan(value):
      return False
    if self._best_value is None:
      return True
    return value < self._best_value if self._best_mode == 'min' else value > self._best_value

  def wait(self) -> None:
    """Blocks until every started save is on disk; ``CheckpointWriteError`` if one
    failed (disk full, no permission)."""
    with self._write_errors():
      self._latest.wait_until_finished()
      self._best.wait_until_finished()

  @contextlib.contextmanager
  def _write_errors(self):
    """A failed write as ``CheckpointWriteError``: an OSError, or TensorStore's
    ValueError carrying the OS error ('Error writing ... [os_error_code=28]')."""
    try:
      yield
    except (OSError, ValueError) as e:
      text = str(e)
      if isinstance(e, ValueError) and 'os_error_code' not in text and 'Error writing' not in text:
        raise
      _quiet_read_echoes_from_now_on()  # the failed save's later asyncio echoes
      raise CheckpointWriteError(
          f'writing a checkpoint under {os.path.dirname(self._latest.directory)} failed '
          f'({_reason(e)}); the steps written before it are kept. Free disk space or fix '
          'the permissions, then run the same command to resume.') from None

  def close(self) -> None:
    """Waits for the saves, then releases orbax's threads."""
    if not self._closed:
      self._closed = True
      self._latest.close()
      self._best.close()

  def __enter__(self):
    return self

  def __exit__(self, kind, error, traceback):
    """On the way out, an exception included: the saves started finish before the
    process can end (an unfinished one would leave only a tmp directory)."""
    if kind is None:
      self.close()
      return
    try:
      if not issubclass(kind, CheckpointWriteError):  # waiting again would fail again
        self.wait()
    except Exception as e:  # pylint: disable=broad-except
      logging.warning('checkpoints not closed cleanly after %s: %s', kind.__name__, _reason(e))
    finally:
      try:
        self.close()
      except Exception:  # pylint: disable=broad-except
        pass  # a failed save fails its close too; the error above is the one to see


class CheckpointWriteError(workdir_lib.WriteError):
  """A checkpoint could not be written."""

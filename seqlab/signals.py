"""Ctrl-C and SIGTERM before a tool's work starts: the process ends at once, in one line.

  from seqlab import signals  # the first lines of a tool, before jax is imported
  signals.exit_until_caught(' before training started; ...')

From that call on, SIGINT or SIGTERM ends the process within milliseconds, with
``seqlab: <SIGNAL>: stopped<note>`` on stderr and exit code 128 + the signal's number
(130, 143: a shell's code for a process a signal ended): while jax imports, while the
run is built, restored and compiled, and between runs. A training loop that saves on a
signal says so (``cli.Interrupt.training_started``); until it leaves, a signal is its
flag (it saves at the next step and exits 0), no longer an exit.

Why a thread and not a handler: CPython runs a Python signal handler only between two
bytecodes of the main thread, so not during an XLA compile of minutes, and a
KeyboardInterrupt raised inside jax's ``_xla_gc_callback`` is swallowed ("Exception
ignored in"; the run then trained on). The C handler under every Python handler writes
the signal's number to ``signal.set_wakeup_fd``'s pipe at once, and a daemon thread
blocked on that pipe ends the process with ``os._exit`` (an XLA compile releases the
GIL). The files are then as a SIGKILL leaves them, which every write survives
(config.json, run_info.json, metrics.jsonl and point.json are replaced whole by a
rename, a checkpoint is renamed into place once complete), and the workdir lock is an
``flock``, which the kernel releases.

A library caller (a notebook, a test calling ``train.train_and_evaluate``) never calls
``exit_until_caught``: its Ctrl-C stays a KeyboardInterrupt, not the end of the kernel.
"""
import os
import signal
import sys
import threading

SIGNALS = (signal.SIGINT, signal.SIGTERM)
_state = {'installed': False, 'note': '', 'catching': 0}  # catching: loops saving on a signal
_exiting = threading.Lock()


def exit_until_caught(note: str = '') -> None:
  """Installs the early exit (module docstring); ``note`` ends its line. Only the main
  thread can install signal handlers: elsewhere, and on a second call, nothing happens."""
  if _state['installed'] or threading.current_thread() is not threading.main_thread():
    return
  _state.update(installed=True, note=note)  # first: a signal may come at any moment now
  read, write = os.pipe()
  os.set_blocking(write, False)  # set_wakeup_fd's requirement: a full pipe never blocks
  for sig in SIGNALS:
    signal.signal(sig, _handle)
  signal.set_wakeup_fd(write)
  threading.Thread(target=_watch, args=(read,), name='seqlab-signals', daemon=True).start()


def catch(on: bool) -> None:
  """A training loop starts (``on``) or stops handling SIGINT/SIGTERM itself."""
  _state['catching'] += 1 if on else -1


def _watch(fd: int) -> None:
  while True:
    for signum in os.read(fd, 64):
      if signum in SIGNALS and not _state['catching']:
        _exit(signum)


def _handle(signum, frame) -> None:
  """The Python handler: the same exit, should anything replace the wakeup pipe."""
  del frame
  if not _state['catching']:
    _exit(signum)


def _exit(signum: int) -> None:
  with _exiting:  # the thread and the handler may both get here; one line only
    for stream in (sys.stdout, sys.stderr):
      try:
        stream.flush()
      except (OSError, ValueError):
        pass
    os.write(2, f'seqlab: {signal.Signals(signum).name}: stopped{_state["note"]}\n'.encode())
    os._exit(128 + signum)  # pylint: disable=protected-access

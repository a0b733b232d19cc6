"""Command-line plumbing shared by the ``python -m seqlab.<tool>`` entry points.

Each tool defines its flags in its own ``flags.FlagValues`` (``own``), not absl's global
``FLAGS``, so that importing several tools in one process (a test session, a notebook)
defines nothing twice. ``run(main, own)`` parses ``own`` and exits with ``main``'s code.
``Interrupt`` turns SIGTERM/SIGINT into a flag that a training loop (``seqlab.train``,
``seqlab.population``) or a sweep (``seqlab.sweep``) checks, so that a stop saves
before it exits.
"""

import os
import signal
import sys

from absl import app
from absl import flags


def parser(own: flags.FlagValues):
  """An absl ``flags_parser`` for ``own``: --help prints its flags; errors are one line."""

  def parse(argv):
    if any(a in ('-h', '--help', '--helpfull', '-?') for a in argv[1:]):
      spec = getattr(sys.modules['__main__'], '__spec__', None)
      name = f'python -m {spec.name}' if spec else os.path.basename(argv[0])
      print(f'usage: {name} [flags]\n')
      print(own.get_help(include_special_flags=False))
      sys.exit(0)
    try:
      rest = own(argv)
    except flags.Error as e:
      print(f'seqlab: bad command line: {e}', file=sys.stderr)
      sys.exit(2)
    flags.FLAGS(argv[:1])  # absl's own flags (logging) at their defaults
    return rest

  return parse


def run(main, own: flags.FlagValues) -> None:
  """``app.run(main)`` over ``own``'s flags; ``main(argv)`` returns the exit code."""
  app.run(lambda argv: sys.exit(main(argv) or 0), flags_parser=parser(own))


class Interrupt:
  """``with Interrupt() as stop:``: SIGTERM and SIGINT set ``stop.signal`` to the signal's
  name (None until one comes) instead of killing the process; the old handlers come
  back on exit. Outside the main thread no handler can be set, so nothing is caught."""

  def __init__(self):
    self.signal = None

  def __enter__(self):
    self._old = {}
    for sig in (signal.SIGTERM, signal.SIGINT):
      try:
        self._old[sig] = signal.signal(sig, self._handle)
      except ValueError:  # not the main thread
        pass
    return self

  def _handle(self, signum, frame):
    del frame
    self.signal = signal.Signals(signum).name

  def __exit__(self, *exc):
    for sig, old in self._old.items():
      signal.signal(sig, old)

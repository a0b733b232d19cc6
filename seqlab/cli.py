"""Command-line plumbing shared by the ``python -m seqlab.<tool>`` entry points.

Each tool defines its flags in its own ``flags.FlagValues`` (``own``), not absl's global
``FLAGS``, so that importing several tools in one process (a test session, a notebook)
defines nothing twice. ``run(main, own)`` parses ``own`` and exits with ``main``'s code.
``Interrupt`` turns SIGTERM/SIGINT into a flag that a training loop (``seqlab.train``,
``seqlab.population``) or a sweep (``seqlab.sweep``) checks once it has started, so
that a stop saves before it exits (before that, ``seqlab.signals`` ends the process).
"""

import difflib
import os
import re
import signal
import sys
import traceback

from absl import app
from absl import flags
from ml_collections import config_flags

from seqlab import config as config_lib
from seqlab import signals


def parser(own: flags.FlagValues, hint: str | None = None):
  """An absl ``flags_parser`` for ``own``: --help prints its flags and exits 0; a bad
  flag, config file, config key or override value is one line on stderr (then ``hint``,
  if given) and exit code 2, not a traceback."""

  def parse(argv):
    if any(a in ('-h', '--help', '--helpfull', '-?') for a in argv[1:]):
      main = sys.modules['__main__']
      spec = getattr(main, '__spec__', None)
      name = f'python -m {spec.name}' if spec else os.path.basename(argv[0])
      print(f'usage: {name} [flags]\n')
      if spec and spec.name.startswith('seqlab.') and main.__doc__:
        print(main.__doc__.strip() + '\n')  # the tool's docstring: its commands, what it does
      print(own.main_module_help() if own is flags.FLAGS else
            own.get_help(include_special_flags=False))
      sys.exit(0)
    try:
      rest = _parse_or_blame_the_config_file(own, argv)
      problem = _config_file_problem(own)
    except flags.Error as e:
      message = f'bad command line: {_last_line(str(e))}'
    except OSError as e:
      message = f'cannot load the config file: {_last_line(str(e))}'
    except SyntaxError as e:
      message = f'the config file does not parse: {e.filename}, line {e.lineno}: {e.msg}'
    except (AttributeError, KeyError) as e:  # ml_collections: a key the config lacks
      message = _unknown_key(argv) or (
          'unknown config key in the overrides: '
          + ' '.join(re.sub(r"\\n|\\|'|\"", ' ', str(e)).split()))
      if "no attribute 'get_config'" in str(e):
        message = 'the config file defines no get_config(); see experiments/*.py'
    except (TypeError, ValueError) as e:  # also a key under a value: model.cell.x
      message = _unknown_key(argv) or f'bad config override: {_last_line(str(e))}'
    else:
      if problem:
        print(f'seqlab: {problem}', file=sys.stderr)
        sys.exit(2)
      if own is not flags.FLAGS:
        flags.FLAGS(argv[:1])  # absl's own flags (logging) at their defaults
      return rest
    print(f'seqlab: {message}', file=sys.stderr)
    if hint:
      print(hint, file=sys.stderr)
    sys.exit(2)

  return parse


def _parse_or_blame_the_config_file(own: flags.FlagValues, argv):
  """``own(argv)``. An exception raised inside the user's config file (its code runs
  while --config is parsed) keeps its traceback, which shows the user's line, then one
  line naming the file, and exits 2; but a ValueError, an experiment's own message
  (an unknown variant), stays the one line ``parse`` gives it."""
  try:
    return own(argv)
  except Exception as e:  # pylint: disable=broad-except
    path = _config_file_of(e, argv)
    if path is None or isinstance(e, ValueError):
      raise
    traceback.print_exc()
    print(f'seqlab: the error above was raised by the config file {path} (its own code, '
          'not seqlab); fix it there', file=sys.stderr)
    sys.exit(2)


def _config_file_of(error: Exception, argv) -> str | None:
  """The --config file in ``argv`` if ``error``'s traceback passes through it."""
  given = _config_arg(argv)
  if given is None:
    return None
  path = given.partition(':')[0]
  frames = traceback.extract_tb(error.__traceback__)
  ours = any(os.path.abspath(f.filename) == os.path.abspath(path) for f in frames)
  return path if ours else None


def _config_arg(argv) -> str | None:
  """The value of the first --config in ``argv`` (``file.py[:variant]``), if any."""
  args = list(argv[1:])
  given = [a.split('=', 1)[1] for a in args if a.startswith('--config=')] + [
      args[i + 1] for i, a in enumerate(args[:-1]) if a == '--config']
  return given[0] if given else None


def _config_file_problem(own: flags.FlagValues) -> str | None:
  """What is wrong with --config's file path, if anything: ml_collections defers a
  missing file or a directory to the config's first read, deep in the tool."""
  if 'config' not in own or not own['config'].present:
    return None
  path = config_flags.get_config_filename(own['config']).partition(':')[0]
  if os.path.isfile(path):
    return None
  kind = 'is a directory, not a config file' if os.path.isdir(path) else 'does not exist'
  return f'--config {path} {kind}; experiments are in experiments/'


# Names other frameworks give seqlab's keys, for the unknown-key hint: spelling alone
# suggested optim.decay_rate for optim.learning_rate.
SYNONYMS = {
    'learning_rate': 'optim.lr', 'lr': 'optim.lr', 'lr_schedule': 'optim.schedule',
    'schedule': 'optim.schedule', 'scheduler': 'optim.schedule', 'warmup': 'optim.warmup_steps',
    'optimizer': 'optim.name', 'weight_decay': 'optim.weight_decay',
    'clip': 'optim.clip_norm', 'grad_clip': 'optim.clip_norm', 'clip_grad_norm': 'optim.clip_norm',
    'max_grad_norm': 'optim.clip_norm', 'momentum': 'optim.momentum',
    'hidden': 'model.hidden_size', 'hidden_dim': 'model.hidden_size',
    'hidden_units': 'model.hidden_size', 'units': 'model.hidden_size',
    'layers': 'model.num_layers', 'n_layers': 'model.num_layers',
    'num_layers': 'model.num_layers', 'depth': 'model.num_layers', 'cell_type': 'model.cell',
    'rnn_type': 'model.cell', 'cell': 'model.cell', 'dropout': 'model.dropout',
    'precision': 'model.dtype', 'dtype': 'model.dtype', 'embedding_dim': 'model.embed_dim',
    'batch_size': 'train.batch_size', 'batch': 'train.batch_size', 'steps': 'train.steps',
    'num_steps': 'train.steps', 'train_steps': 'train.steps', 'max_steps': 'train.steps',
    'iterations': 'train.steps', 'seq_len': 'task.length', 'sequence_length': 'task.length',
    'random_seed': 'seed',
    # moved to their own section (seqlab.config.seq2seq_section) on 2026-12-07
    'attention': 'seq2seq.attention', 'scheduled_sampling': 'seq2seq.scheduled_sampling',
    'decoder_layers': 'seq2seq.decoder_layers', 'decoder_hidden_size': 'seq2seq.decoder_hidden_size',
}


def _unknown_key(argv) -> str | None:
  """'--config.model.xyz: model has no key 'xyz'; its keys: ...' for the first override
  in ``argv`` that names no key of the config file's config; None if none is found."""
  try:
    path, _, variant = _config_arg(argv).partition(':')
    module = config_lib.load_file(path)
    config = module.get_config(variant) if variant else module.get_config()
  except Exception:  # pylint: disable=broad-except  # the generic message then
    return None
  for arg in argv[1:]:
    match = re.match(r'--config\.([\w.]+)', arg)
    if not match:
      continue
    node, parts = config, match.group(1).split('.')
    for i, part in enumerate(parts):
      if not hasattr(node, 'keys') or part not in node:
        owner = '.'.join(parts[:i]) or 'the config'
        keys = ', '.join(sorted(node.keys())) if hasattr(node, 'keys') else 'none (a value)'
        close = difflib.get_close_matches(part, list(node.keys()) if hasattr(node, 'keys') else [], 1)
        synonym = SYNONYMS.get(part)
        if synonym and not _has_key(config, synonym):  # e.g. task.length: not every task's
          synonym = None
        guess = synonym or ('.'.join(parts[:i] + close) if close else None)
        hint = f' (did you mean {guess}?)' if guess else ''
        return (f'unknown config key --config.{match.group(1)}: {owner} has no key '
                f'{part!r}{hint}; its keys: {keys}')
      node = node[part]
  return None


def _has_key(config, dotted: str) -> bool:
  node = config
  for part in dotted.split('.'):
    if not hasattr(node, 'keys') or part not in node:
      return False
    node = node[part]
  return True


def _last_line(message: str) -> str:
  """The cause, without the traceback that some flag errors embed."""
  lines = [l.strip() for l in message.strip().splitlines() if l.strip()]
  return lines[-1] if 'Traceback' in message or len(lines) > 2 else ' '.join(lines)


def run(main, own: flags.FlagValues) -> None:
  """``app.run(main)`` over ``own``'s flags; ``main(argv)`` returns the exit code."""
  app.run(lambda argv: sys.exit(main(argv) or 0), flags_parser=parser(own))


def exit_after_write_error(error: Exception) -> None:
  """Ends the process at once with exit code 1 after ``seqlab: training stopped:
  <error>`` (a ``workdir.WriteError``: a full disk, say). A save that failed half-way
  leaves orbax's threads waiting for it forever, which would keep the interpreter from
  exiting; everything that could be written is."""
  print(f'seqlab: training stopped: {error}', file=sys.stderr, flush=True)
  sys.stdout.flush()
  os._exit(1)  # pylint: disable=protected-access


class Interrupt:
  """``with Interrupt() as stop:``: SIGTERM and SIGINT set ``stop.signal`` to the signal's
  name (None until one comes) instead of killing the process; the old handlers come
  back on exit. Outside the main thread no handler can be set, so nothing is caught.

  In a command-line tool (``signals.exit_until_caught``) a signal still ends the
  process at once until ``stop.training_started()``: the loop calls it when its first
  step is compiled, so that a Ctrl-C while setting up or compiling is prompt and one
  that comes while training saves the next step."""

  def __init__(self):
    self.signal = None
    self._catching = False

  def training_started(self) -> None:
    """From here until the ``with`` ends, a signal only sets ``signal``: the loop saves
    at its next step and returns."""
    if not self._catching:
      self._catching = True
      signals.catch(True)

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
    if self._catching:
      self._catching = False
      signals.catch(False)

"""Evaluates a run's best (or latest) checkpoint on one of its held-out splits.

  python -m seqlab.evaluate --workdir runs/adding [--checkpoint latest] [--split test]

``--split eval`` (the default) reads the validation split, the one training selects
on; ``--split test`` the test split, which a finished run has already scored once for
its last and its best checkpoint (the 'test' rows of metrics.jsonl): read it to report,
never to choose. Prints the metrics and writes them to
<workdir>/<split>_<checkpoint>.json (eval_best.json, test_best.json, ...; a read-only
workdir gets a warning, not an error: the metrics are printed first). Seq2seq runs
also decode the split (greedy, or ``--method beam --beam_width 4``) and report
``decode_exact_match``, ``decode_token_error_rate`` (PER for G2P),
``decode_sequence_error_rate`` (WER) and ``decode_token_accuracy``.
"""
if __name__ == '__main__':  # first, before jax imports: a Ctrl-C at any moment stops it
  from seqlab import signals  # pylint: disable=g-import-not-at-top
  signals.exit_until_caught('')
import json
import os
import sys

from absl import flags
from absl import logging
import jax

from seqlab import checkpoint
from seqlab import cli
from seqlab import config as config_lib
from seqlab import train
from seqlab import workdir as workdir_lib

FLAGS = flags.FlagValues()  # our own: see seqlab.cli
_WORKDIR = flags.DEFINE_string('workdir', None, 'Run directory.', flag_values=FLAGS)
_CHECKPOINT = flags.DEFINE_enum('checkpoint', 'best', ['best', 'latest'], 'Which checkpoint.',
                                flag_values=FLAGS)
_SPLIT = flags.DEFINE_enum('split', 'eval', ['eval', 'test'],
                           "Which held-out split: 'eval' (validation, the default) or 'test'.",
                           flag_values=FLAGS)
_METHOD = flags.DEFINE_enum('method', 'greedy', ['greedy', 'beam'],
                            'Seq2seq runs: how to decode.', flag_values=FLAGS)
_BEAM = flags.DEFINE_integer('beam_width', 4, 'Seq2seq beam search: hypotheses kept.',
                             lower_bound=1, flag_values=FLAGS)
_PENALTY = flags.DEFINE_float('length_penalty', 0.0, 'Seq2seq beam search: GNMT alpha.',
                              lower_bound=0.0, flag_values=FLAGS)


def evaluate_workdir(workdir: str, which: str = 'best', method: str = 'greedy',
                     beam_width: int = 4, length_penalty: float = 0.0,
                     split: str = 'eval') -> dict:
  """The metrics of ``workdir``'s ``which`` checkpoint on ``split``, also written to
  <split>_<which>.json (a warning, not an error, when the workdir is not writable)."""
  result = compute_metrics(workdir, which, method, beam_width, length_penalty, split)
  problem = save_result(workdir, which, result)
  if problem:
    logging.warning('%s', problem)
  return result


def compute_metrics(workdir: str, which: str = 'best', method: str = 'greedy',
                    beam_width: int = 4, length_penalty: float = 0.0,
                    split: str = 'eval') -> dict:
  """The metrics of ``workdir``'s ``which`` checkpoint on its held-out ``split``."""
  config, task, model, state, step = train.load_run(workdir, which)
  eval_bs = config.train.eval_batch_size or config.train.batch_size
  eval_fn = jax.jit(lambda p, b, c: train.eval_step(p, b, c, model=model, spec=task.spec))
  carry = model.initial_carry(eval_bs) if task.spec.stateful else None
  metrics = train.evaluate(eval_fn, model, state['params'], task, eval_bs, carry, split,
                           method=method, beam_width=beam_width, length_penalty=length_penalty)
  result = {'step': step, 'checkpoint': which, 'split': split, **metrics}
  if model.decodes:
    result['decode_method'] = method if method == 'greedy' else f'beam{beam_width}'
  return result


def save_result(workdir: str, which: str, result: dict) -> str | None:
  """Writes ``result`` to <workdir>/<split>_<which>.json; None, or why it could not."""
  path = os.path.join(workdir, f'{result["split"]}_{which}.json')
  try:
    with open(path, 'w') as f:
      json.dump(result, f, indent=2)
  except OSError as e:
    return (f'cannot write {path} ({e.strerror or e}); the metrics are not saved: make '
            'the workdir writable to keep them')
  return None


def main(argv):
  if len(argv) > 1:
    print(f'seqlab: unexpected arguments: {" ".join(argv[1:])}', file=sys.stderr)
    return 2
  if not _WORKDIR.value:
    print('seqlab: --workdir is required (the directory of a python -m seqlab.run)',
          file=sys.stderr)
    return 2
  workdir_lib.quiet_logging()
  try:
    result = compute_metrics(_WORKDIR.value, _CHECKPOINT.value, _METHOD.value, _BEAM.value,
                             _PENALTY.value, _SPLIT.value)
  except (FileNotFoundError, config_lib.ConfigError, checkpoint.DamagedCheckpointError) as e:
    print(f'seqlab: {e}', file=sys.stderr)
    return 2
  print(json.dumps(result, indent=2), flush=True)  # first: a failed write loses nothing
  problem = save_result(_WORKDIR.value, _CHECKPOINT.value, result)
  if problem:
    print(f'seqlab: warning: {problem}', file=sys.stderr)
  return 0


if __name__ == '__main__':
  cli.run(main, FLAGS)

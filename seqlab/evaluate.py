"""Evaluates a run's best (or latest) checkpoint on its held-out split.

  python -m seqlab.evaluate --workdir runs/adding [--checkpoint latest]

Prints the metrics and writes them to <workdir>/eval_<checkpoint>.json. Seq2seq runs
also decode the split (greedy, or ``--method beam --beam_width 4``) and report
``decode_exact_match``, ``decode_token_error_rate`` (PER for G2P),
``decode_sequence_error_rate`` (WER) and ``decode_token_accuracy``.
"""
import json
import os
import sys

from absl import flags
import jax

from seqlab import cli
from seqlab import config as config_lib
from seqlab import train
from seqlab import workdir as workdir_lib

FLAGS = flags.FlagValues()  # our own: see seqlab.cli
_WORKDIR = flags.DEFINE_string('workdir', None, 'Run directory.', flag_values=FLAGS)
_CHECKPOINT = flags.DEFINE_enum('checkpoint', 'best', ['best', 'latest'], 'Which checkpoint.',
                                flag_values=FLAGS)
_METHOD = flags.DEFINE_enum('method', 'greedy', ['greedy', 'beam'],
                            'Seq2seq runs: how to decode.', flag_values=FLAGS)
_BEAM = flags.DEFINE_integer('beam_width', 4, 'Seq2seq beam search: hypotheses kept.',
                             lower_bound=1, flag_values=FLAGS)
_PENALTY = flags.DEFINE_float('length_penalty', 0.0, 'Seq2seq beam search: GNMT alpha.',
                              lower_bound=0.0, flag_values=FLAGS)


def evaluate_workdir(workdir: str, which: str = 'best', method: str = 'greedy',
                     beam_width: int = 4, length_penalty: float = 0.0) -> dict:
  config, task, model, state, step = train.load_run(workdir, which)
  eval_bs = config.train.eval_batch_size or config.train.batch_size
  eval_fn = jax.jit(lambda p, b, c: train.eval_step(p, b, c, model=model, spec=task.spec))
  carry = model.encoder.initial_carry(eval_bs) if task.spec.stateful else None
  metrics = train.evaluate(eval_fn, state['params'], task, eval_bs, carry)
  result = {'step': step, 'checkpoint': which, **metrics}
  if task.spec.model == 'seq2seq':
    from seqlab import seq2seq_metrics  # pylint: disable=g-import-not-at-top
    decoded = seq2seq_metrics.seq2seq_eval(model, state['params'], task, eval_bs, method,
                                           beam_width, length_penalty)
    result.update({f'decode_{k}': v for k, v in decoded.items() if k != 'count'},
                  decode_method=method if method == 'greedy' else f'beam{beam_width}')
  with open(os.path.join(workdir, f'eval_{which}.json'), 'w') as f:
    json.dump(result, f, indent=2)
  return result


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
    result = evaluate_workdir(_WORKDIR.value, _CHECKPOINT.value, _METHOD.value, _BEAM.value,
                              _PENALTY.value)
  except (FileNotFoundError, config_lib.ConfigError) as e:
    print(f'seqlab: {e}', file=sys.stderr)
    return 2
  print(json.dumps(result, indent=2))
  return 0


if __name__ == '__main__':
  cli.run(main, FLAGS)

"""Evaluates a run's best (or latest) checkpoint on its held-out split.

  python -m seqlab.evaluate --workdir runs/adding [--checkpoint latest]

Prints the metrics and writes them to <workdir>/eval_<checkpoint>.json.
"""
import json
import os
import sys

from absl import app
from absl import flags
import jax

from seqlab import config as config_lib
from seqlab import train
from seqlab import workdir as workdir_lib

_WORKDIR = flags.DEFINE_string('workdir', None, 'Run directory.', required=True)
_CHECKPOINT = flags.DEFINE_enum('checkpoint', 'best', ['best', 'latest'], 'Which checkpoint.')


def evaluate_workdir(workdir: str, which: str = 'best') -> dict:
  config, task, model, state, step = train.load_run(workdir, which)
  eval_bs = config.train.eval_batch_size or config.train.batch_size
  eval_fn = jax.jit(lambda p, b, c: train.eval_step(p, b, c, model=model, spec=task.spec))
  carry = model.encoder.initial_carry(eval_bs) if task.spec.stateful else None
  metrics = train.evaluate(eval_fn, state['params'], task, eval_bs, carry)
  result = {'step': step, 'checkpoint': which, **metrics}
  with open(os.path.join(workdir, f'eval_{which}.json'), 'w') as f:
    json.dump(result, f, indent=2)
  return result


def main(argv):
  del argv
  workdir_lib.quiet_logging()
  try:
    result = evaluate_workdir(_WORKDIR.value, _CHECKPOINT.value)
  except (FileNotFoundError, config_lib.ConfigError) as e:
    print(f'seqlab: {e}', file=sys.stderr)
    return 2
  print(json.dumps(result, indent=2))
  return 0


if __name__ == '__main__':
  app.run(lambda argv: sys.exit(main(argv)))

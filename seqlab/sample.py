"""Generates text from a trained language-model run.

  python -m seqlab.sample --workdir runs/charlm --prompt "ROMEO:" --length 300 \\
      [--temperature 0.8 --top_k 0 --seed 0 --num_samples 1]

The prompt is read once and each new character is one recurrent step from the
carried state.
"""
import sys

from absl import app
from absl import flags
import jax
import numpy as np

from seqlab import config as config_lib
from seqlab import models
from seqlab import train
from seqlab import workdir as workdir_lib

_WORKDIR = flags.DEFINE_string('workdir', None, 'Run directory.', required=True)
_PROMPT = flags.DEFINE_string('prompt', '\n', 'Text to continue.')
_LENGTH = flags.DEFINE_integer('length', 200, 'Tokens to generate.', lower_bound=1)
_TEMPERATURE = flags.DEFINE_float('temperature', 1.0, '0 is greedy.', lower_bound=0.0)
_TOP_K = flags.DEFINE_integer('top_k', 0, 'Sample from the k most likely (0: all).',
                              lower_bound=0)
_SEED = flags.DEFINE_integer('seed', 0, 'Sampling seed.')
_NUM = flags.DEFINE_integer('num_samples', 1, 'Samples to draw.', lower_bound=1)
_CHECKPOINT = flags.DEFINE_enum('checkpoint', 'best', ['best', 'latest'], 'Which checkpoint.')


def sample_text(workdir, prompt, length, temperature=1.0, top_k=0, seed=0, num_samples=1,
                which='best') -> list[str]:
  """``num_samples`` continuations of ``prompt`` from the run in ``workdir``."""
  _, task, model, state, _ = train.load_run(workdir, which)
  if not hasattr(task, 'encode') or model.target != 'steps' or not model.vocab_size:
    raise ValueError(f'{workdir} is not a language-model run (task {type(task).__name__}); '
                     'sampling needs a text task such as charlm')
  if not prompt:
    raise ValueError('--prompt must not be empty')
  ids = np.tile(task.encode(prompt)[None], (num_samples, 1))
  run = jax.jit(lambda p, x, k: models.sample(model, p, x, k, length, temperature, top_k))
  tokens, _ = run(state['params'], ids, jax.random.key(seed))
  return [prompt + task.decode(row) for row in np.asarray(tokens)]


def main(argv):
  del argv
  workdir_lib.quiet_logging()
  try:
    texts = sample_text(_WORKDIR.value, _PROMPT.value, _LENGTH.value, _TEMPERATURE.value,
                        _TOP_K.value, _SEED.value, _NUM.value, _CHECKPOINT.value)
  except (FileNotFoundError, ValueError, config_lib.ConfigError) as e:
    print(f'seqlab: {e}', file=sys.stderr)
    return 2
  print('\n\n'.join(texts))
  return 0


if __name__ == '__main__':
  app.run(lambda argv: sys.exit(main(argv)))

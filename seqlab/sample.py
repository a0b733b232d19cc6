"""Generates from a trained run: text from a language model, outputs from a seq2seq
model, MIDI files from a music model.

  python -m seqlab.sample --workdir runs/charlm --prompt "ROMEO:" --length 300 \\
      [--temperature 0.8 --top_k 0 --seed 0 --num_samples 1]
  python -m seqlab.sample --workdir runs/g2p --prompt "seqlab recurrent" \\
      [--method beam --beam_width 4 --length_penalty 0.6]
  python -m seqlab.sample --exported runs/charlm/export --prompt "ROMEO:" --length 300
  python -m seqlab.sample --workdir runs/music --length 64 [--temperature 1 --seed 0]

Language models read the prompt once and take one recurrent step per new token from
the carried state. Seq2seq runs decode each whitespace-separated item of the prompt
(a word for G2P, letters for the reverse task) in one batch, and print
``item -> output  (score)``. Music runs (task 'music') start from the first frame of
the first validation piece, draw ``--length`` frames (each pitch on with its sigmoid
probability), and write each sample to ``<workdir>/samples/music_seed<seed>_<i>.mid``,
printing the paths. ``--exported`` samples a language model from its export
(``python -m seqlab.export``) instead of a workdir: the same text for the same flags.
"""
if __name__ == '__main__':  # first, before jax imports: a Ctrl-C at any moment stops it
  from seqlab import signals  # pylint: disable=g-import-not-at-top
  signals.exit_until_caught('')
import json
import os
import sys

from absl import flags
import jax
import numpy as np

from seqlab import cli
from seqlab import config as config_lib
from seqlab import export
from seqlab import models
from seqlab import train
from seqlab.models import decode
from seqlab.models import lm
from seqlab.tasks import music
from seqlab import workdir as workdir_lib

FLAGS = flags.FlagValues()  # our own: see seqlab.cli
_WORKDIR = flags.DEFINE_string('workdir', None, 'Run directory.', flag_values=FLAGS)
_EXPORTED = flags.DEFINE_string('exported', None, 'A language model\'s export directory '
                                '(python -m seqlab.export), instead of --workdir.',
                                flag_values=FLAGS)
_PROMPT = flags.DEFINE_string('prompt', '\n', 'Text to continue (seq2seq: inputs to decode).',
                              flag_values=FLAGS)
_LENGTH = flags.DEFINE_integer('length', 200, 'Tokens to generate (language models).',
                               lower_bound=1, flag_values=FLAGS)
_TEMPERATURE = flags.DEFINE_float('temperature', 1.0, '0 is greedy.', lower_bound=0.0,
                                  flag_values=FLAGS)
_TOP_K = flags.DEFINE_integer('top_k', 0, 'Sample from the k most likely tokens (0, or k at '
                              'least the vocabulary size: from all of them).',
                              lower_bound=0, flag_values=FLAGS)
_SEED = flags.DEFINE_integer('seed', 0, 'Sampling seed.', flag_values=FLAGS)
_NUM = flags.DEFINE_integer('num_samples', 1, 'Samples to draw.', lower_bound=1,
                            flag_values=FLAGS)
_CHECKPOINT = flags.DEFINE_enum('checkpoint', 'best', ['best', 'latest'], 'Which checkpoint.',
                                flag_values=FLAGS)
_METHOD = flags.DEFINE_enum('method', 'greedy', ['greedy', 'beam'], 'Seq2seq: how to decode.',
                            flag_values=FLAGS)
_BEAM = flags.DEFINE_integer('beam_width', 4, 'Seq2seq beam search: hypotheses kept.',
                             lower_bound=1, flag_values=FLAGS)
_PENALTY = flags.DEFINE_float('length_penalty', 0.0, 'Seq2seq beam search: GNMT alpha.',
                              lower_bound=0.0, flag_values=FLAGS)


def sample_text(workdir, prompt, length, temperature=1.0, top_k=0, seed=0, num_samples=1,
                which='best') -> list[str]:
  """``num_samples`` continuations of ``prompt`` from the language model in ``workdir``.

  ``top_k`` > 0 samples from the k most likely tokens; 0, or a k at least the
  vocabulary size (``task.spec.num_outputs``), samples from all of them.
  """
  _, task, model, state, _ = train.load_run(workdir, which)
  if model.decodes:
    raise ValueError(f'{workdir} is a seq2seq run: use decode_inputs (or --method)')
  if not hasattr(task, 'encode') or model.target != 'steps' or not model.vocab_size:
    raise ValueError(f'{workdir} is not a language-model run (task {type(task).__name__}); '
                     'sampling needs a text task such as charlm')
  if not prompt:
    raise ValueError('--prompt must not be empty')
  if top_k < 0:
    raise ValueError(f'--top_k must be 0 (no truncation) or positive, got {top_k}')
  ids = np.tile(task.encode(prompt)[None], (num_samples, 1))
  run = jax.jit(lambda p, x, k: models.sample(model, p, x, k, length, temperature, top_k))
  tokens, _ = run(state['params'], ids, jax.random.key(seed))
  return [prompt + task.decode(row) for row in np.asarray(tokens)]


def sample_exported(path, prompt, length, temperature=1.0, top_k=0, seed=0,
                    num_samples=1) -> list[str]:
  """``sample_text`` from a language model's export at ``path``: its ``step`` reads the
  prompt and draws each token with the key ``sample_text`` uses, so the texts match."""
  loaded = export.load(path)
  vocab, step = loaded.manifest['input'].get('vocab'), loaded.functions.get('step')
  if loaded.manifest['output']['per'] != 'step' or step is None or vocab is None:
    raise ValueError(f'{path} is not the export of a language model (it needs a step '
                     'function and a vocabulary)')
  if not prompt:
    raise ValueError('--prompt must not be empty')
  index = {c: i for i, c in enumerate(vocab) if c is not None}
  ids = np.array([[index.get(c, loaded.manifest['input'].get('unknown', 0)) for c in prompt]]
                 * num_samples, np.int32)
  carry = [np.zeros([num_samples, *leaf['shape'][1:]], leaf['dtype'])
           for leaf in loaded.manifest['carry']]

  def generate(params, carry, ids, key):
    carry, logits = jax.lax.scan(lambda c, x: step.call(params, c, x), carry, ids.T)

    def draw(state, key_t):
      carry, logits_t = state
      token = lm.sample_logits(key_t, logits_t, temperature, top_k)
      return step.call(params, carry, token), token

    _, tokens = jax.lax.scan(draw, (carry, logits[-1]), jax.random.split(key, length))
    return tokens.T

  tokens = jax.jit(generate)(loaded.params, carry, ids, jax.random.key(seed))
  return [prompt + ''.join(vocab[i] or '?' for i in row) for row in np.asarray(tokens).tolist()]


def decode_inputs(workdir, items, method='greedy', beam_width=4, length_penalty=0.0,
                  which='best') -> list[tuple[str, str, float]]:
  """Seq2seq run: each source text in ``items`` -> (item, decoded text, score)."""
  _, task, model, state, _ = train.load_run(workdir, which)
  if not model.decodes:
    raise ValueError(f'{workdir} is not a seq2seq run (task {type(task).__name__})')
  if not items:
    raise ValueError('--prompt must hold at least one input to decode')
  sources = [task.encode_text(item) for item in items]
  lengths = np.array([len(s) for s in sources], np.int32)
  inputs = np.zeros((len(sources), int(lengths.max())), np.int32)  # PAD = 0
  for i, s in enumerate(sources):
    inputs[i, :len(s)] = s
  max_length = int(task.batch('eval', 0, 1)['targets'].shape[1])
  tokens, scores = decode.decode(model, state['params'], inputs, lengths, method=method,
                                 beam_width=beam_width, length_penalty=length_penalty,
                                 max_length=max_length)
  return [(item, task.decode_text(row), float(score))
          for item, row, score in zip(items, np.asarray(tokens), np.asarray(scores))]


def sample_midi(workdir, length, temperature=1.0, seed=0, num_samples=1, which='best'
                ) -> list[str]:
  """Music run: ``num_samples`` pieces of 1 + ``length`` frames (the prompt frame, then
  the sampled ones) written as MIDI files; returns their paths."""
  _, task, model, state, _ = train.load_run(workdir, which)
  prompt = np.tile(task.splits.eval.inputs[:1, :1], (num_samples, 1, 1))
  run = jax.jit(lambda p, x, k: models.sample_frames(model, p, x, k, length, temperature))
  frames, _ = run(state['params'], prompt, jax.random.key(seed))
  out = os.path.join(workdir, 'samples')
  os.makedirs(out, exist_ok=True)
  paths = []
  for i, piece in enumerate(np.concatenate([prompt, np.asarray(frames)], axis=1)):
    paths.append(os.path.join(out, f'music_seed{seed}_{i}.mid'))
    music.write_midi(paths[-1], piece)
  return paths


def run_task(workdir):
  """The task of the run in ``workdir``, built from its config.json."""
  from seqlab import tasks  # pylint: disable=g-import-not-at-top
  path = os.path.join(workdir, 'config.json')
  if not os.path.exists(path):
    raise FileNotFoundError(f'{workdir} holds no run (no config.json); pass the --workdir '
                            'of a python -m seqlab.run')
  with open(path) as f:
    config = json.load(f)
  return tasks.make_task(config['task'], config['seed'])


def main(argv):
  if len(argv) > 1:
    print(f'seqlab: unexpected arguments: {" ".join(argv[1:])}', file=sys.stderr)
    return 2
  if not _WORKDIR.value and not _EXPORTED.value:
    print('seqlab: --workdir is required (the directory of a python -m seqlab.run), or '
          '--exported (of a python -m seqlab.export)', file=sys.stderr)
    return 2
  if _WORKDIR.value and _EXPORTED.value:
    print('seqlab: give --workdir or --exported, not both', file=sys.stderr)
    return 2
  workdir_lib.quiet_logging()
  try:
    if _EXPORTED.value:
      print('\n\n'.join(sample_exported(_EXPORTED.value, _PROMPT.value, _LENGTH.value,
                                         _TEMPERATURE.value, _TOP_K.value, _SEED.value,
                                         _NUM.value)))
      return 0
    task = run_task(_WORKDIR.value)
    if isinstance(task, music.Music):
      for path in sample_midi(_WORKDIR.value, _LENGTH.value, _TEMPERATURE.value, _SEED.value,
                              _NUM.value, _CHECKPOINT.value):
        print(f'wrote {path}')
      return 0
    if task.spec.decodes:
      for item, out, score in decode_inputs(_WORKDIR.value, _PROMPT.value.split(),
                                            _METHOD.value, _BEAM.value, _PENALTY.value,
                                            _CHECKPOINT.value):
        print(f'{item} -> {out}  ({score:.3f})')
      return 0
    texts = sample_text(_WORKDIR.value, _PROMPT.value, _LENGTH.value, _TEMPERATURE.value,
                        _TOP_K.value, _SEED.value, _NUM.value, _CHECKPOINT.value)
  except (FileNotFoundError, ValueError, config_lib.ConfigError) as e:
    print(f'seqlab: {e}', file=sys.stderr)
    return 2
  print('\n\n'.join(texts))
  return 0


if __name__ == '__main__':
  cli.run(main, FLAGS)

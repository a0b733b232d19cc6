"""Exports a finished run for use without seqlab: ``jax.export`` functions beside its weights.

  python -m seqlab.export --workdir runs/charlm [--checkpoint best|latest] \\
      [--out runs/charlm/export] [--platforms cpu,cuda] [--step | --nostep]

writes one directory (``--out``, default <workdir>/export), replaced whole or not at all:

  params.npz     the weights, one array per '/'-joined path ('params/head/kernel', ...)
  forward.jax    (params, inputs, lengths) -> outputs, the whole sequence at once
  step.jax       unidirectional models: (params, carry, input_t) -> (carry, output_t)
  encoder.jax    seq2seq: (params, inputs, lengths) -> (state, memory)
  decoder_step.jax  seq2seq: (params, state, memory, tokens) -> (state, logits)
  manifest.json  what goes in and comes out (input kind, vocabulary, normalisation,
                 output meaning, each function's arguments), the step's initial carry
                 (zeros of the listed shapes), the config and the checkpoint step

Each ``.jax`` file is ``jax.export.Exported.serialize()``: StableHLO that any later JAX
loads with ``jax.export.deserialize`` and runs with ``.call`` on each platform of
``--platforms``, batch and time symbolic, so one file serves every batch size and
length. The weights are an argument, not constants baked in: one copy serves every
function, the ``.jax`` files stay small, and the weights can be read or changed with
NumPy alone (README.md, "Export"). Loading needs jax, numpy and flatbuffers (which
``jax.export`` serialises with), never seqlab.

``step`` streams: output_t equals the whole-sequence output at t (target='steps': the
output of step t; target='sequence' with pool='last': the output were the sequence to
end at t). A bidirectional encoder reads the whole sequence before its first output,
and pool 'mean'/'flatten' needs the whole sequence, so those models have no ``step``.
"""
if __name__ == '__main__':  # first, before jax imports: a Ctrl-C at any moment stops it
  from seqlab import signals  # pylint: disable=g-import-not-at-top
  signals.exit_until_caught('')
import dataclasses
import json
import os
import shutil
import sys
from typing import NamedTuple

from absl import flags
import jax
import jax.numpy as jnp
import numpy as np

from seqlab import checkpoint
from seqlab import cli
from seqlab import config as config_lib
from seqlab import scan
from seqlab import tokens as tokens_lib
from seqlab import train
from seqlab import workdir as workdir_lib
from seqlab.tasks import uea

FORMAT = 'seqlab-export/1'
PLATFORMS = ('cpu', 'cuda', 'rocm', 'tpu')
BATCH, TIME = 'batch', 'time'  # the symbolic dimensions' names, as the manifest writes them

FLAGS = flags.FlagValues()  # our own: see seqlab.cli
_WORKDIR = flags.DEFINE_string('workdir', None, 'Run directory (a finished run).',
                               flag_values=FLAGS)
_CHECKPOINT = flags.DEFINE_enum('checkpoint', 'best', ['best', 'latest'], 'Which checkpoint.',
                                flag_values=FLAGS)
_OUT = flags.DEFINE_string('out', None, 'Directory to write (default <workdir>/export).',
                           flag_values=FLAGS)
_PLATFORMS = flags.DEFINE_list('platforms', ['cpu', 'cuda'], 'Platforms the functions run '
                               f'on, from: {", ".join(PLATFORMS)}.', flag_values=FLAGS)
_STEP = flags.DEFINE_boolean('step', None, 'Write the one-step function: --step requires it '
                             '(an error for a model that cannot stream), --nostep leaves it '
                             'out; default: when the model can stream.', flag_values=FLAGS)


class Loaded(NamedTuple):
  """An export read back: its manifest, weights and functions (``jax.export.Exported``)."""
  manifest: dict
  params: dict
  functions: dict


def load(path: str) -> Loaded:
  """Reads an export directory with jax and numpy alone (what README.md's snippet does)."""
  if not os.path.exists(os.path.join(path, 'manifest.json')):
    raise FileNotFoundError(f'{path} holds no export (no manifest.json); write one with '
                            'python -m seqlab.export --workdir RUN --out PATH')
  with open(os.path.join(path, 'manifest.json')) as f:
    manifest = json.load(f)
  params = dict(np.load(os.path.join(path, manifest['params'])))
  functions = {}
  for name, fn in manifest['functions'].items():
    with open(os.path.join(path, fn['file']), 'rb') as f:
      functions[name] = jax.export.deserialize(bytearray(f.read()))
  return Loaded(manifest, params, functions)


def _paths(tree) -> list[str]:
  """Each leaf's path in ``tree``, its keys and indices joined by '/'."""
  return ['/'.join(str(getattr(k, 'key', getattr(k, 'idx', k))) for k in path)
          for path, _ in jax.tree_util.tree_flatten_with_path(tree)[0]]


def flat_params(params) -> dict[str, np.ndarray]:
  """A params pytree -> {'/'-joined path: array}, the layout of params.npz."""
  return dict(zip(_paths(params), map(np.asarray, jax.tree.leaves(params))))


def nested(flat: dict, like):
  """``flat_params``'s inverse: {path: array} -> the pytree shaped as ``like``."""
  return jax.tree.unflatten(jax.tree.structure(like), [flat[k] for k in _paths(like)])


def exportable(model):
  """``model`` with the scan options a symbolic time length allows: the sequential
  engine (jax has no associative scan over an axis of symbolic size, and 'auto'
  compares the symbolic width with a threshold), no ``fused`` spans
  (``scan.chunk_spans`` counts steps) and no remat chunks (``scan.chunked`` too):
  the same forward values, computed by the plain scan."""
  options = dataclasses.replace(model.encoder.scan, engine=scan.Engine.SEQUENTIAL, fuse=False,
                                remat=0)
  return model.clone(encoder=model.encoder.clone(scan=options))


def streams(model) -> str | None:
  """None if ``model`` (a ``SequenceModel``) has a one-step function, else why not."""
  if model.encoder.bidirectional:
    return ('model.bidirectional=True: its backward direction reads the whole sequence '
            'before the first output, so it has no one-step function')
  if model.target == 'sequence' and model.pool != 'last':
    return (f"model.pool={model.pool!r} needs the whole sequence; only pool='last' (or "
            "target='steps') streams")
  return None


def _spec(shape, dtype):
  return jax.ShapeDtypeStruct(tuple(shape), dtype)


def _shape_names(aval) -> list:
  """An abstract value's shape for the manifest: ints, and 'batch'/'time' for symbols."""
  return [d if isinstance(d, int) else str(d) for d in aval.shape]


def _describe(exported) -> dict:
  """What a function takes and returns, flat, as its manifest entry lists them."""
  args = [{'shape': _shape_names(a), 'dtype': str(a.dtype)} for a in exported.in_avals]
  outs = [{'shape': _shape_names(a), 'dtype': str(a.dtype)} for a in exported.out_avals]
  return {'in_avals': args, 'out_avals': outs}


def sequence_functions(model, params, spec, step: bool) -> tuple[dict, list | None]:
  """A ``SequenceModel``'s functions to export, as (name -> (fn, example args)), and the
  step's initial carry, [{'shape', 'dtype'}] per leaf (None without a step)."""
  b, t = jax.export.symbolic_shape(f'{BATCH}, {TIME}')
  x_t = _spec((b,), jnp.int32) if spec.input_vocab else _spec((b, spec.input_features),
                                                              jnp.float32)
  xs = _spec((b, t) + x_t.shape[1:], x_t.dtype)
  p = jax.tree.map(lambda a: _spec(a.shape, a.dtype), flat_params(params))

  def forward(flat, inputs, lengths):
    return model.apply(nested(flat, params), inputs, lengths)[0]

  functions = {'forward': (forward, (p, xs, _spec((b,), jnp.int32)))}
  if not step:
    return functions, None
  leaves, tree = jax.tree.flatten(model.initial_carry(1))  # every leaf [batch, ...]
  leaves = [_spec((b,) + l.shape[1:], l.dtype) for l in leaves]

  def one_step(flat, carry, input_t):
    out, carries = model.apply(nested(flat, params), input_t[:, None],
                               initial_carry=jax.tree.unflatten(tree, carry))
    return jax.tree.leaves(carries), out[:, 0] if model.target == 'steps' else out

  functions['step'] = (one_step, (p, leaves, x_t))
  return functions, [{'shape': _shape_names(l), 'dtype': str(l.dtype)} for l in leaves]


def seq2seq_functions(model, params) -> dict:
  """A ``Seq2Seq``'s functions: teacher-forced forward, encoder, one decoder step."""
  b, s, t = jax.export.symbolic_shape(f'{BATCH}, source_{TIME}, target_{TIME}')
  p = jax.tree.map(lambda a: _spec(a.shape, a.dtype), flat_params(params))
  inputs, lengths = _spec((b, s), jnp.int32), _spec((b,), jnp.int32)

  def forward(flat, inputs, lengths, decoder_inputs):
    return model.apply(nested(flat, params), inputs, lengths, decoder_inputs)[0]

  def encode(flat, inputs, lengths):
    return model.apply(nested(flat, params), inputs, lengths, method='encode')

  def encoder(flat, inputs, lengths):
    state, memory = encode(flat, inputs, lengths)
    return jax.tree.leaves(state), memory

  state, memory = jax.eval_shape(encode, p, inputs, lengths)
  tree = jax.tree.structure(state)

  def decoder_step(flat, state, memory, tokens):
    state, logits, _ = model.apply(nested(flat, params), jax.tree.unflatten(tree, state),
                                   tokens, memory, method='step')
    return jax.tree.leaves(state), logits

  return {'forward': (forward, (p, inputs, lengths, _spec((b, t), jnp.int32))),
          'encoder': (encoder, (p, inputs, lengths)),
          'decoder_step': (decoder_step, (p, jax.tree.leaves(state), memory,
                                          _spec((b,), jnp.int32)))}


def interface(task, task_cfg) -> tuple[dict, dict]:
  """The manifest's 'input' and 'output' for ``task`` (built from ``task_cfg``): what
  the ids, features and outputs mean, from what the task knows (its vocabulary,
  classes, normalisation)."""
  spec = task.spec
  if spec.input_vocab:
    inputs = {'kind': 'tokens', 'vocab_size': spec.input_vocab}
  else:
    inputs = {'kind': 'features', 'features': spec.input_features}
  outputs = {'kind': 'logits' if spec.loss == 'cross_entropy' else 'regression',
             'size': spec.num_outputs, 'per': 'step' if spec.target == 'steps' else 'sequence'}
  names = {tokens_lib.PAD: '<pad>', tokens_lib.BOS: '<bos>', tokens_lib.EOS: '<eos>'}
  specials = [names[i] for i in range(tokens_lib.NUM_SPECIAL)]
  if hasattr(task, 'chars'):  # charlm: id 0 is a character the training text lacks
    vocab = [None, *task.chars]
    inputs.update(vocab=vocab, unknown=0)
    outputs.update(vocab=vocab, meaning='logits of the next character (id)')
  elif hasattr(task, 'phonemes'):  # g2p
    inputs.update(vocab=specials + list(task.letters), lowercase=True)
    outputs.update(vocab=specials + list(task.phonemes),
                   meaning='logits of the next phoneme; decode from <bos> until <eos>')
  elif isinstance(getattr(task, 'vocab', None), dict):  # sentiment
    inputs.update(vocab=sorted(task.vocab, key=task.vocab.get))
  if hasattr(task, 'classes'):
    outputs.update(labels=list(task.classes), meaning='logits of the classes (labels)')
  if task_cfg['name'] == 'uea':  # per channel
    mean, std = uea.normalisation(task_cfg)
    inputs['normalisation'] = {'mean': np.asarray(mean).tolist(), 'std': np.asarray(std).tolist()}
  if hasattr(task, 'scale'):  # forecast: one series, inputs and outputs alike
    inputs['normalisation'] = {'mean': [task.offset], 'std': [task.scale]}
    outputs['meaning'] = (f'the next {task.horizon} values, normalised: value = output * '
                          'std + mean (input.normalisation)')
  if 'normalisation' in inputs:
    inputs['normalisation']['apply'] = 'features = (x - mean) / std, per feature'
  return inputs, outputs


def check_finished(workdir: str) -> None:
  """A ValueError saying why unless ``workdir`` holds a run that trained all its steps."""
  path = os.path.join(workdir, 'config.json')
  if not os.path.exists(path):
    raise FileNotFoundError(f'{workdir} holds no run (no config.json); pass the --workdir '
                            'of a finished python -m seqlab.run')
  with open(path) as f:
    steps = config_lib.upgrade(json.load(f))['train']['steps']
  ckpt = checkpoint.Checkpointer(workdir, read_only=True)
  latest = ckpt.latest_step()
  ckpt.close()
  if latest is None or latest < steps:
    saved = 'no checkpoint' if latest is None else f'its latest checkpoint is step {latest}'
    raise ValueError(f'{workdir} is unfinished ({saved} of train.steps={steps}); let it '
                     'finish (run its python -m seqlab.run command again if it stopped), then '
                     'export')


def export_run(workdir: str, out: str | None = None, which: str = 'best',
               platforms=('cpu', 'cuda'), step: bool | None = None) -> dict:
  """Writes the export of ``workdir``'s ``which`` checkpoint to ``out`` (default
  <workdir>/export; see the module docstring) and returns its manifest.

  ``step``: None writes the one-step function when the model can stream, True
  requires it (a ValueError saying why it cannot), False leaves it out.
  """
  bad = sorted(set(platforms) - set(PLATFORMS))
  if bad or not platforms:
    raise ValueError(f'--platforms={",".join(platforms)} is not valid; choose from: '
                     f'{", ".join(PLATFORMS)}')
  check_finished(workdir)
  config, task, model, state, saved_step = train.load_run(workdir, which)
  model, params = exportable(model), state['params']
  if task.spec.decodes:
    if step:
      raise ValueError('a seq2seq run streams with decoder_step (written always); drop --step')
    functions, carry = seq2seq_functions(model, params), None
  else:
    why = streams(model)
    if step and why:
      raise ValueError(f'cannot export a step function: {why}; export without --step')
    functions, carry = sequence_functions(model, params, task.spec, step is not False and not why)
  inputs, outputs = interface(task, config.task)
  manifest = {'format': FORMAT, 'params': 'params.npz', 'platforms': list(platforms),
              'input': inputs, 'output': outputs, 'functions': {}, 'carry': carry,
              'checkpoint': {'workdir': os.path.abspath(workdir), 'which': which,
                             'step': int(saved_step)},
              'config': config.to_dict()}
  blobs = {}
  for name, (fn, args) in functions.items():
    exported = jax.export.export(jax.jit(fn), platforms=tuple(platforms))(*args)
    blobs[f'{name}.jax'] = exported.serialize()
    manifest['functions'][name] = {'file': f'{name}.jax', **_describe(exported)}
  _write_dir(out or os.path.join(workdir, 'export'), flat_params(params), blobs, manifest)
  return manifest


def _write_dir(out: str, params: dict, blobs: dict, manifest: dict) -> None:
  """Writes the export beside ``out`` and renames it into place, replacing an earlier
  export (never a directory that holds something else)."""
  if os.path.exists(out) and os.listdir(out) and not os.path.exists(
      os.path.join(out, 'manifest.json')):
    raise ValueError(f'--out={out} exists and holds no export; give an empty or new directory')
  tmp = out.rstrip('/') + '.tmp'
  shutil.rmtree(tmp, ignore_errors=True)
  os.makedirs(tmp)
  np.savez(os.path.join(tmp, manifest['params']), **params)
  for name, blob in blobs.items():
    with open(os.path.join(tmp, name), 'wb') as f:
      f.write(blob)
  with open(os.path.join(tmp, 'manifest.json'), 'w') as f:
    json.dump(manifest, f, indent=2)
  shutil.rmtree(out, ignore_errors=True)
  os.replace(tmp, out)


def main(argv):
  if len(argv) > 1:
    print(f'seqlab: unexpected arguments: {" ".join(argv[1:])}', file=sys.stderr)
    return 2
  if not _WORKDIR.value:
    print('seqlab: --workdir is required (the directory of a finished python -m seqlab.run)',
          file=sys.stderr)
    return 2
  workdir_lib.quiet_logging()
  try:
    manifest = export_run(_WORKDIR.value, _OUT.value, _CHECKPOINT.value, _PLATFORMS.value,
                          _STEP.value)
  except (FileNotFoundError, ValueError, checkpoint.DamagedCheckpointError) as e:
    print(f'seqlab: {e}', file=sys.stderr)
    return 2
  out = _OUT.value or os.path.join(_WORKDIR.value, 'export')
  print(f'exported step {manifest["checkpoint"]["step"]} of {_WORKDIR.value} to {out}: '
        f'{", ".join(manifest["functions"])} ({", ".join(manifest["platforms"])})')
  return 0


if __name__ == '__main__':
  cli.run(main, FLAGS)

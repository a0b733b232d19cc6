"""seqlab.export: a run's jax.export functions against seqlab's own model, and run without seqlab."""
import json
import os
import re
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest

from seqlab import checkpoint
from seqlab import export
from seqlab import layers
from seqlab import sample
from seqlab import train
from seqlab import workdir as workdir_lib
from seqlab.models import SequenceModel
from seqlab.tasks.base import Spec
from conftest import ROOT, load_config

# Each kind of run: (experiment, overrides of its :quick config).
KINDS = {
    'charlm': ('charlm', {}),
    'uea': ('japanese_vowels', {'model.bidirectional': False}),  # lengths vary
    'forecast': ('sunspots', {}),
    'bistack': ('japanese_vowels', {'model.num_layers': 2}),  # bidirectional, stacked
    'g2p': ('g2p', {}),
}
STREAMING = ('charlm', 'uea', 'forecast', 'g2p')


def kind_config(kind: str):
  name, overrides = KINDS[kind]
  config = load_config(name)
  for key, value in overrides.items():
    section, field = key.split('.')
    config[section][field] = value
  return config


def finished_run(config, workdir: str) -> None:
  """``workdir`` as a finished run of ``config`` leaves it, with its initial weights:
  config.json and the checkpoint of step train.steps. Export reads only these;
  compiling the five train steps and evals instead took 4 minutes on the loaded 2-core
  test machine."""
  task, model, optimizer = train.build(config)
  workdir_lib.prepare(workdir, config)
  state = train.create_state(model, optimizer, task.batch('train', 0, config.train.batch_size),
                             seed=config.seed, stateful=task.spec.stateful)
  with checkpoint.Checkpointer(workdir) as ckpt:
    ckpt.save(config.train.steps, state)


def run_tool(module, argv, capsys) -> tuple[int, str, str]:
  """``python -m <module> argv`` in this process: (exit code, stdout, stderr)."""
  module.FLAGS([module.__name__, *argv])
  try:
    code = module.main([module.__name__])
  finally:
    module.FLAGS.unparse_flags()
  out, err = capsys.readouterr()
  return code, out, err


class Run:
  """A finished run of one kind, seqlab's model and weights, and its export read back."""

  def __init__(self, kind, workdir):
    self.kind, self.workdir = kind, workdir
    finished_run(kind_config(kind), workdir)
    export.export_run(workdir)
    _, self.task, self.model, state, _ = train.load_run(workdir)
    self.params = state['params']
    self.loaded = export.load(os.path.join(workdir, 'export'))
    self.apply = jax.jit(lambda params, *args: self.model.apply(params, *args)[0])

  def call(self, name, *args):
    return self.loaded.functions[name].call(self.loaded.params, *args)

  def batch(self, batch_size: int, time: int):
    """Held-out inputs of ``batch_size`` rows cut to ``time`` steps, their lengths, the batch."""
    b = self.task.batch('eval', 0, max(batch_size, 4))
    inputs = b['inputs'][:batch_size, -time:] if self.kind == 'forecast' else (
        b['inputs'][:batch_size, :time])
    full = np.full((batch_size,), inputs.shape[1], np.int32)
    lengths = np.minimum(b['lengths'][:batch_size], time) if 'lengths' in b else full
    return inputs, lengths.astype(np.int32), b


class Runs(dict):
  """kind -> its ``Run``, made the first time a test asks (``-k`` builds only its own)."""

  def __init__(self, root):
    super().__init__()
    self.root = root

  def __missing__(self, kind):
    self[kind] = Run(kind, str(self.root / kind))
    return self[kind]


@pytest.fixture(scope='module')
def runs(tmp_path_factory):
  return Runs(tmp_path_factory.mktemp('export'))


@pytest.mark.parametrize('kind', KINDS)
def test_forward_equals_seqlab_at_two_batch_sizes_and_lengths(runs, kind):
  run = runs[kind]
  for batch_size, time in ((1, 5), (3, 9)):
    inputs, lengths, b = run.batch(batch_size, time)
    if run.model.decodes:
      decoder_inputs = b['decoder_inputs'][:batch_size, :time - 2]
      want = run.apply(run.params, inputs, lengths, decoder_inputs)
      got = run.call('forward', inputs, lengths, decoder_inputs)
    else:
      want = run.apply(run.params, inputs, *([lengths] if 'lengths' in b else []))
      got = run.call('forward', inputs, lengths)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('kind', STREAMING)
def test_streaming_step_equals_the_forward_at_every_step(runs, kind):
  run, manifest = runs[kind], runs[kind].loaded.manifest
  inputs, lengths, b = run.batch(2, 7)
  if run.model.decodes:
    decoder_inputs = b['decoder_inputs'][:2, :6]
    whole = run.call('forward', inputs, lengths, decoder_inputs)
    state, memory = run.call('encoder', inputs, lengths)
    for t in range(decoder_inputs.shape[1]):
      state, logits = run.call('decoder_step', state, memory, decoder_inputs[:, t])
      np.testing.assert_allclose(logits, whole[:, t], rtol=1e-5, atol=1e-5)
    return
  carry = [np.zeros([2, *leaf['shape'][1:]], leaf['dtype']) for leaf in manifest['carry']]
  whole = run.call('forward', inputs, np.full((2,), inputs.shape[1], np.int32))
  for t in range(inputs.shape[1]):
    carry, out = run.call('step', carry, inputs[:, t])
    if manifest['output']['per'] == 'step':
      want = whole[:, t]
    else:  # the output were the sequence to end at t
      want = run.call('forward', inputs, np.full((2,), t + 1, np.int32))
    np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-5)


def test_a_diagonal_recurrence_exports_through_the_sequential_engine():
  """seqlab runs the LRU with the associative scan here ('auto', narrow); jax cannot
  export that over a symbolic time axis, so the export scans step by step."""
  spec = Spec(input_vocab=0, input_features=3, target='steps', num_outputs=2, loss='mse',
              metric='mse')
  model = SequenceModel(encoder=layers.StackedRNN(cell='lru', hidden_size=8), num_outputs=2,
                        target='steps')
  xs = np.random.default_rng(0).normal(size=(2, 5, 3)).astype(np.float32)
  params = model.init(jax.random.key(0), xs)
  functions, carry = export.sequence_functions(export.exportable(model), params, spec, True)
  fn, args = functions['forward']
  forward = jax.export.export(jax.jit(fn))(*args)
  got = forward.call(export.flat_params(params), xs, np.full((2,), 5, np.int32))
  np.testing.assert_allclose(got, model.apply(params, xs)[0], rtol=1e-5, atol=1e-5)
  assert carry == [{'shape': ['batch', 8], 'dtype': 'complex64'}]


def test_manifest_says_what_goes_in_and_comes_out(runs):
  charlm, uea, forecast = (runs[k].loaded.manifest for k in ('charlm', 'uea', 'forecast'))
  task = runs['charlm'].task
  assert charlm['input']['vocab'][1:] == task.chars and charlm['input']['kind'] == 'tokens'
  assert charlm['functions']['forward']['in_avals'][-2]['shape'] == ['batch', 'time']
  assert charlm['checkpoint']['step'] == 40 and charlm['config']['task']['name'] == 'charlm'
  assert uea['output']['labels'] == list(runs['uea'].task.classes)
  assert len(uea['input']['normalisation']['mean']) == 12
  scaling = forecast['input']['normalisation']
  assert scaling['mean'] == [runs['forecast'].task.offset]
  assert scaling['std'] == [runs['forecast'].task.scale]
  g2p = runs['g2p'].loaded.manifest
  assert g2p['output']['vocab'][3:] == runs['g2p'].task.phonemes
  assert set(g2p['functions']) == {'forward', 'encoder', 'decoder_step'}


def test_bidirectional_model_has_no_step_and_refuses_one(runs):
  run = runs['bistack']
  assert set(run.loaded.manifest['functions']) == {'forward'}
  assert run.loaded.manifest['carry'] is None
  with pytest.raises(ValueError, match=r'^cannot export a step function: model.bidirectional'):
    export.export_run(run.workdir, step=True)


def test_cli_writes_the_export_and_fails_in_one_line_saying_why(runs, tmp_path, capsys):
  out = str(tmp_path / 'charlm')
  code, stdout, _ = run_tool(export, ['--workdir', runs['charlm'].workdir, '--out', out,
                                      '--checkpoint', 'latest', '--nostep'], capsys)
  assert code == 0 and 'forward (cpu, cuda)' in stdout, stdout
  assert set(export.load(out).manifest['functions']) == {'forward'}
  empty, unfinished = tmp_path / 'empty', tmp_path / 'unfinished'
  empty.mkdir()
  shutil.copytree(runs['forecast'].workdir, unfinished)  # step 10, now of 20 steps
  with open(unfinished / 'config.json') as f:
    config = json.load(f)
  config['train']['steps'] = 20
  with open(unfinished / 'config.json', 'w') as f:
    json.dump(config, f)
  shutil.rmtree(unfinished / 'export')
  for workdir, why in ((empty, 'holds no run'), (unfinished, 'is unfinished'),
                       (runs['bistack'].workdir, 'cannot export a step function')):
    code, _, err = run_tool(export, ['--workdir', str(workdir), '--step'], capsys)
    assert code == 2 and err.count('\n') == 1 and why in err, err
    if workdir == unfinished:
      assert 'latest checkpoint is step 10 of train.steps=20' in err
  assert not os.path.exists(unfinished / 'export')


def test_sampling_the_export_gives_the_workdirs_text(runs, capsys):
  run = runs['charlm']
  args = ['--prompt', 'def f(x):', '--length', '30', '--temperature', '0']
  export_dir = os.path.join(run.workdir, 'export')
  code, from_workdir, _ = run_tool(sample, ['--workdir', run.workdir, *args], capsys)
  assert code == 0 and len(from_workdir) > len('def f(x):') + 30
  assert run_tool(sample, ['--exported', export_dir, *args], capsys)[:2] == (0, from_workdir)
  drawn = sample.sample_exported(export_dir, 'import', 30, temperature=1.0, top_k=5, seed=3,
                                 num_samples=2)
  assert drawn == sample.sample_text(run.workdir, 'import', 30, temperature=1.0, top_k=5,
                                     seed=3, num_samples=2)
  with pytest.raises(ValueError, match='not the export of a language model'):
    sample.sample_exported(os.path.join(runs['uea'].workdir, 'export'), 'x', 3)
  with pytest.raises(FileNotFoundError, match='holds no export'):
    sample.sample_exported(run.workdir, 'x', 3)
  code, _, err = run_tool(sample, ['--workdir', run.workdir, '--exported', export_dir], capsys)
  assert code == 2 and 'not both' in err


def test_readme_snippet_runs_without_seqlab(runs, tmp_path):
  with open(os.path.join(ROOT, 'README.md')) as f:
    readme = f.read()
  section = readme[readme.index('### Export'):]
  snippet = re.search(r'```python\n(.*?)```', section, re.S)[1]
  run = runs['charlm']
  snippet = snippet.replace("'runs/charlm/export'", repr(os.path.join(run.workdir, 'export')))
  snippet += f"np.savez({str(tmp_path / 'out.npz')!r}, logits=logits, out=out)\n"
  env = {k: v for k, v in os.environ.items() if k != 'PYTHONPATH'}
  proc = subprocess.run([sys.executable, '-c', snippet], cwd=tmp_path, env=env,
                        capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-2000:]
  got = np.load(tmp_path / 'out.npz')
  ids = run.task.encode('def f(x):')[None]
  want = run.apply(run.params, ids)
  np.testing.assert_allclose(got['logits'], want, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(got['out'], want[:, -1], rtol=1e-5, atol=1e-5)
  assert proc.stdout.strip() == repr(run.task.decode([int(np.argmax(want[0, -1]))]))

"""Bad input is a clear error that names the problem and the fix, not a traceback from
deep inside JAX or NumPy: language models refuse a bidirectional encoder, sample's
--top_k past the vocabulary, bench's --shapes and --lengths, UEA train/test files that
disagree, non-UTF-8 sentiment CSVs, and charlm splits too short for the batch."""
import functools
import os
import subprocess
import sys
import time

import jax
import ml_collections
import pytest

from seqlab import bench
from seqlab import config as config_lib
from seqlab import memory
from seqlab import models
from seqlab import sample
from seqlab import tasks
from seqlab import train
from seqlab import workdir as workdir_lib
from seqlab.tasks import base
from seqlab.tasks import charlm
from seqlab.tasks import sentiment
from seqlab.tasks import uea
from conftest import ROOT, load_config, run_module


def cfg(**kw):
  return ml_collections.FrozenConfigDict(kw)  # frozen: make_task must never write


def write(path, text, encoding='utf-8'):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, 'w', encoding=encoding) as f:
    f.write(text)
  return str(path)


def one_line_error(proc, *fragments):
  """``proc`` exited 2 with one ``seqlab: ...`` line on stderr holding ``fragments``."""
  assert proc.returncode == 2, proc.stderr[-3000:]
  assert 'Traceback' not in proc.stderr, proc.stderr[-3000:]
  lines = proc.stderr.strip().splitlines()
  assert lines and lines[-1].startswith('seqlab: '), proc.stderr[-3000:]
  for fragment in fragments:
    assert fragment in lines[-1], (fragment, lines[-1])


# --- 1. a language model must not read the character it predicts --------------------------


def test_bidirectional_language_model_fails_before_training(tmp_path):
  workdir = tmp_path / 'run'
  proc = run_module('seqlab.run', '--config', 'experiments/charlm.py:quick', '--workdir',
                    str(workdir), '--config.model.bidirectional=True')
  one_line_error(proc, 'model.bidirectional=True lets a language model see the next character',
                 'set model.bidirectional=False')
  assert not (workdir / 'checkpoints').exists()


def test_only_causal_specs_refuse_a_bidirectional_encoder():
  config = load_config('charlm')
  lm = tasks.make_task(config.task, config.seed).spec
  assert lm.causal
  bidirectional = ml_collections.ConfigDict(config.model.to_dict())
  bidirectional.bidirectional = True
  with pytest.raises(ValueError, match='set model.bidirectional=False'):
    models.build_model(bidirectional, lm)
  models.build_model(config.model, lm)  # unidirectional: fine
  for name in ('copy', 'reverse', 'adding'):  # targets that are not the next inputs
    other = load_config(name)
    spec = tasks.make_task(other.task, other.seed).spec
    assert not spec.causal, name
    model_cfg = ml_collections.ConfigDict(other.model.to_dict())
    model_cfg.bidirectional = True
    models.build_model(model_cfg, spec)
  with pytest.raises(ValueError, match="causal=True needs target='steps'"):
    base.Spec(input_vocab=5, input_features=0, target='sequence', num_outputs=2,
              loss='cross_entropy', metric='accuracy', causal=True)


# --- 2. sample --top_k past the vocabulary ------------------------------------------------


@pytest.fixture(scope='module')
def charlm_run(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp('charlm') / 'run')
  config = load_config('charlm')
  config.train.steps = config.train.eval_every = config.train.checkpoint_every = 2
  config.train.log_every = 1
  config.optim.warmup_steps = 0
  train.train_and_evaluate(config, workdir)
  return workdir


def test_sample_top_k_at_least_the_vocabulary_keeps_every_token(charlm_run):
  vocab = tasks.make_task(load_config('charlm').task, 0).spec.num_outputs
  full = sample.sample_text(charlm_run, 'ab', 8, top_k=0, seed=3)
  assert sample.sample_text(charlm_run, 'ab', 8, top_k=100000, seed=3) == full
  assert sample.sample_text(charlm_run, 'ab', 8, top_k=vocab, seed=3) == full
  assert len(sample.sample_text(charlm_run, 'ab', 8, top_k=2, seed=3)[0]) == 10
  with pytest.raises(ValueError, match='--top_k must be 0'):
    sample.sample_text(charlm_run, 'ab', 8, top_k=-1)
  proc = run_module('seqlab.sample', '--workdir', charlm_run, '--prompt', 'ab', '--length', '8',
                    '--top_k', '100000', '--seed', '3')
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert proc.stdout.strip() == full[0].strip()


# --- 3. bench --shapes and --lengths -------------------------------------------------------


@pytest.mark.parametrize('args, fragment', [
    (['--shapes', '0x10x8'], "shape '0x10x8': batch x time x hidden must be positive"),
    (['--shapes', '4x-2x8'], "shape '4x-2x8': batch x time x hidden must be positive"),
    (['--memory', '--lengths', 'abc'], "--lengths: 'abc' is not a positive integer"),
    (['--memory', '--lengths', '64,0'], "--lengths: '0' is not a positive integer"),
    (['--input', '0'], '--input must be a positive integer'),
    (['--json', '/nonexistent/dir/b.json'], '--json /nonexistent/dir/b.json: cannot write'),
    (['--json', '/tmp'], '--json /tmp: cannot write'),
])
def test_bench_bad_shapes_and_lengths_are_usage_errors(args, fragment):
  proc = run_module('seqlab.bench', '--cells', 'rnn', '--peers', 'flax', '--steps', '1',
                    '--rounds', '2', *args)
  one_line_error(proc, fragment)


def test_bench_parsers():
  assert bench.parse_lengths(['64', '256']) == [64, 256]
  assert bench.parse_lengths([64]) == [64]  # QUICK's
  for bad in (['abc'], ['-1'], ['0'], ['1.5'], []):
    with pytest.raises(bench.app.UsageError, match='--lengths'):
      bench.parse_lengths(bad)
  with pytest.raises(ValueError, match='must be positive integers'):
    bench.Shape.parse('8x0x4')


# --- 4. UEA train and test files with different channels ---------------------------------

TS_HEADER = """@problemName Toy
@timeStamps false
@classLabel true a b
"""


def test_uea_train_and_test_with_different_channels(tmp_path):
  train_path = write(tmp_path / 'Toy_TRAIN.ts',
                     TS_HEADER + '@dimensions 2\n@data\n1,2,3:4,5,6:a\n1,2:3,4:b\n')
  test_path = write(tmp_path / 'Toy_TEST.ts',
                    TS_HEADER + '@dimensions 3\n@data\n1,2:3,4:5,6:a\n1:2:3:b\n')
  with pytest.raises(ValueError) as e:
    tasks.make_task(cfg(name='uea', dataset='Toy', data_dir=str(tmp_path)), seed=0)
  message = str(e.value)
  assert train_path in message and test_path in message
  assert '3 channel(s)' in message and 'has 2' in message and 'same problem' in message


def test_uea_undeclared_channels_must_agree_within_a_file(tmp_path):
  path = write(tmp_path / 'Toy_TRAIN.ts', TS_HEADER + '@data\n1,2:3,4:a\n1,2:3,4:5,6:b\n')
  write(tmp_path / 'Toy_TEST.ts', TS_HEADER + '@data\n1,2:3,4:a\n')
  with pytest.raises(ValueError, match=f'{path}, line 6: expected 2 channel'):
    uea.load('Toy', str(tmp_path))


# --- 5. sentiment CSV that is not UTF-8 ----------------------------------------------------


def test_sentiment_csv_that_is_not_utf8_names_the_file_and_the_fix(tmp_path):
  path = write(tmp_path / 'reviews.csv', 'label,text\npos,good\nneg,caf\u00e9 was bad\n',
               encoding='latin-1')
  with pytest.raises(ValueError) as e:
    tasks.make_task(cfg(name='sentiment', path=path), seed=0)
  message = str(e.value)
  assert path in message and 'not UTF-8' in message and 'byte 0xe9 on line 3' in message
  assert 're-save it as UTF-8' in message
  utf8 = write(tmp_path / 'ok.csv', 'label,text\npos,good\nneg,caf\u00e9 was bad\n')
  assert sentiment.read_examples(utf8)[1] == ['good', 'caf\u00e9 was bad']


# --- 6. charlm splits too short for the batch ---------------------------------------------


def test_a_directory_as_charlm_path_is_named(tmp_path):
  with pytest.raises(FileNotFoundError, match='is a directory; point it at a text file'):
    charlm.load_text(str(tmp_path), 'shakespeare')


def test_the_readmes_own_csv_forecast_command_runs(tmp_path):
  """README: sunspots' experiment with ``--config.task.csv=FILE --config.task.column=NAME``
  (the file replaces the shipped series, which the experiment sets)."""
  path = write(tmp_path / 'series.csv', 'day,val\n' + ''.join(
      f'{i},{(i * 7) % 23 + 0.5 * i}\n' for i in range(200)))
  proc = run_module('seqlab.run', '--config', 'experiments/sunspots.py:quick', '--workdir',
                    str(tmp_path / 'run'), f'--config.task.csv={path}', '--config.task.column=val',
                    '--config.train.steps=4')
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert 'final eval:' in proc.stdout


def test_charlm_split_too_short_names_the_split_and_the_keys(tmp_path):
  path = write(tmp_path / 'text.txt', ('abcdefghij' * 300))  # 3000 characters
  task = tasks.make_task(cfg(name='charlm', path=path, seq_len=32), seed=0)  # 150 held out
  assert task.num_eval_batches(74) == 1  # 75 validation characters: one per stream is enough
  assert task.num_eval_batches(74, 'test') == 1  # and the other 75 are the test split
  with pytest.raises(ValueError) as e:
    task.batch('eval', 0, 256)
  message = str(e.value)
  for fragment in ("held-out 'eval' split has 75 characters", 'train.eval_batch_size',
                   'train.batch_size', 'task.test_fraction', 'task.max_chars', 'need 257'):
    assert fragment in message, (fragment, message)
  with pytest.raises(ValueError, match='held-out'):
    task.num_eval_batches(75)
  task.batch('train', 0, 89)  # 2850 training characters: 89 x 32 + 1 = 2849
  with pytest.raises(ValueError) as e:
    task.batch('train', 0, 90)
  message = str(e.value)
  for fragment in ('training split has 2850 characters', 'train.batch_size', 'task.seq_len',
                   'task.max_chars', 'need 2881'):
    assert fragment in message, (fragment, message)
  with pytest.raises(ValueError, match='too few for 2 streams'):
    charlm.streams(task.encode('abc'), 2, 4)
  # Through the command line: before any training step, in one line, nothing written.
  workdir = tmp_path / 'run'
  proc = run_module('seqlab.run', '--config', 'experiments/charlm.py:quick', '--workdir',
                    str(workdir), f'--config.task.path={path}', '--config.task.max_chars=0',
                    '--config.train.eval_batch_size=256')
  assert proc.returncode == 2 and "held-out 'eval' split has 75" in proc.stderr
  assert 'Traceback' not in proc.stderr and not workdir.exists()


@pytest.mark.parametrize('seed', [-1, 2**31, 99999999999999999999])
def test_a_seed_out_of_int32_is_refused_by_validate(seed):
  config = load_config('adding')
  config.seed = seed
  with pytest.raises(config_lib.ConfigError, match=r'config.seed must be an integer in '
                     r'\[0, 2\*\*31 - 1\]'):
    config_lib.validate(config)
  config.seed = 2**31 - 1
  config_lib.validate(config)


def test_a_huge_seed_is_one_line_before_anything_is_written(tmp_path):
  """Issue 23: it was a 39-line OverflowError after the workdir was locked."""
  workdir = tmp_path / 'run'
  proc = run_module('seqlab.run', '--config', 'experiments/adding.py:quick',
                    '--config.seed=99999999999999999999', '--workdir', str(workdir))
  one_line_error(proc, 'config.seed must be an integer in [0, 2**31 - 1]')
  assert not workdir.exists()


# --- A model too big for memory (issue 23: it hung, ignoring SIGTERM) -------------------


def _abstract_step(config):
  """The jitted train step of ``config`` and its abstract state, as seqlab.train builds them."""
  task, model, optimizer = train.build(config)
  example = task.batch('train', 0, config.train.batch_size)
  mesh = train.make_mesh()
  init = functools.partial(train.create_state, model, optimizer, seed=0)
  abstract = train.restore_target(jax.eval_shape(init, example), mesh)
  step = jax.jit(functools.partial(train.train_step, model=model, optimizer=optimizer,
                                   spec=task.spec), donate_argnums=0)
  return step, abstract, example, train.batch_sharding(mesh, example)


def test_check_fits_compares_the_compiled_step_with_the_memory_there(monkeypatch):
  config = load_config('adding')
  step, abstract, example, shardings = _abstract_step(config)
  args = (abstract, memory.abstract(example, shardings))
  need = memory.step_bytes(step.lower(*args).compile())
  # Independent floor: the LSTM's weights 4H(I + H + 1) + the head H + 1, float32, each
  # held as parameters and Adam's two moments, besides the gradient.
  h, i = config.model.hidden_size, 2
  weights = 4 * h * (i + h + 1) + h + 1
  assert need >= 4 * weights * 4
  monkeypatch.setattr(memory, 'available_bytes', lambda devices: (need, 'of RAM available'))
  memory.check_fits(step, args, config)  # exactly fits
  monkeypatch.setattr(memory, 'available_bytes', lambda devices: (need - 1, 'of RAM available'))
  with pytest.raises(config_lib.ConfigError, match=r'the train step needs about .* more than '
                     r'the .* of RAM available; lower model.hidden_size=16, '
                     r'train.batch_size=16 or task.length=10'):
    memory.check_fits(step, args, config)


def test_a_model_too_big_for_memory_is_refused_at_once(tmp_path):
  """Issue 23's command: refused in one line before anything is allocated or written,
  the workdir's lock released."""
  workdir = tmp_path / 'run'
  t0 = time.perf_counter()
  proc = run_module('seqlab.run', '--config', 'experiments/adding.py:quick',
                    '--config.model.hidden_size=200000', '--workdir', str(workdir), timeout=120)
  assert time.perf_counter() - t0 < 60
  one_line_error(proc, 'the train step needs about', 'TB of memory per device',
                 'lower model.hidden_size=200000, train.batch_size=16 or task.length=10')
  assert not os.path.exists(workdir)  # checked before the workdir is even made
  with workdir_lib.lock(str(workdir)):
    pass


_RAISING_RUN = '''
import sys
import jax
from seqlab import run, train
def fail(config, workdir):
  raise {error}
train.train_and_evaluate = fail
sys.argv = ['seqlab.run', '--config', 'experiments/adding.py:quick', '--workdir', sys.argv[1]]
run.run()
'''


@pytest.mark.parametrize('error', [
    'MemoryError()',
    "jax.errors.JaxRuntimeError('RESOURCE_EXHAUSTED: Out of memory while trying to allocate "
    "1234 bytes.\\nmore detail')"])
def test_an_allocation_failure_anywhere_is_one_line_and_exit_1(tmp_path, error):
  proc = subprocess.run([sys.executable, '-c', _RAISING_RUN.format(error=error),
                         str(tmp_path / 'run')], cwd=ROOT, capture_output=True, text=True,
                        timeout=120)
  assert proc.returncode == 1, proc.stderr[-3000:]
  assert 'Traceback' not in proc.stderr, proc.stderr[-3000:]
  last = proc.stderr.strip().splitlines()[-1]
  assert last.startswith('seqlab: training stopped: out of memory (') and (
      'lower model.hidden_size, train.batch_size' in last), last


def test_a_sentiment_row_with_an_empty_label_is_refused_naming_its_line(tmp_path):
  """It trained with '' as a class of its own (issue 23). Lines count as in the file:
  the header, a blank line and a quoted two-line text included."""
  path = write(tmp_path / 'd.csv', 'label,text\npos,"good,\nfine"\n\nneg,bad\n ,meh\npos,ok\n')
  with pytest.raises(ValueError, match=f'{path}, line 6: the label is empty'):
    tasks.make_task(cfg(name='sentiment', path=path), seed=0)
  tsv = write(tmp_path / 'd.tsv', 'pos\tgood\n\tbad\n')
  with pytest.raises(ValueError, match=f'{tsv}, line 2: the label is empty'):
    sentiment.read_table(tsv)
  no_text = write(tmp_path / 'e.csv', 'pos,good\n\nneg\n')
  with pytest.raises(ValueError, match=f"{no_text}, line 3: expected label','text"):
    sentiment.read_table(no_text)


@pytest.mark.parametrize('tool', ['seqlab.run', 'seqlab.sweep'])
@pytest.mark.parametrize('body, error, line', [
    ('  return 1 / 0', 'ZeroDivisionError: division by zero', 4),
    ('  c = config_lib.base_config()\n  c.model.hiden_size = 3\n  return c', 'hiden_size', 5),
])
def test_an_error_inside_the_users_config_file_keeps_its_traceback_and_names_it(
    tmp_path, tool, body, error, line):
  """The traceback is the user's code (their line is in it); one last line says the
  error came from their file, not from seqlab (issue 23)."""
  path = write(tmp_path / 'mine.py', 'from seqlab import config as config_lib\n\n'
               f'def get_config(arg=None):\n{body}\n')
  proc = run_module(tool, '--config', path, '--workdir', str(tmp_path / 'run'))
  assert proc.returncode == 2, proc.stderr[-3000:]
  assert 'Traceback' in proc.stderr and error in proc.stderr
  assert f'File "{path}", line {line}, in get_config' in proc.stderr
  assert proc.stderr.strip().splitlines()[-1] == (
      f'seqlab: the error above was raised by the config file {path} (its own code, not '
      'seqlab); fix it there')
  assert not (tmp_path / 'run').exists()


def test_available_bytes_reads_the_accelerators_allocator_or_the_hosts_ram(monkeypatch):
  """GPUs: the smallest bytes_limit - bytes_in_use of memory_stats(); CPU devices (no
  stats) share /proc/meminfo's MemAvailable."""

  class Device:
    device_kind = 'NVIDIA H100'

    def __init__(self, stats):
      self.stats = stats

    def memory_stats(self):
      return self.stats

  gpus = [Device({'bytes_limit': 80, 'bytes_in_use': 10}),
          Device({'bytes_limit': 80, 'bytes_in_use': 30})]
  assert memory.available_bytes(gpus) == (50, 'free on each NVIDIA H100')
  monkeypatch.setattr(memory, '_ram_available', lambda: 1000)
  assert memory.available_bytes([Device(None)] * 4) == (
      250, 'of RAM available to each of 4 CPU devices')
  with open('/proc/meminfo') as f:
    meminfo = int([l for l in f if l.startswith('MemAvailable')][0].split()[1]) * 1024
  monkeypatch.undo()
  assert 0 < memory._ram_available() <= meminfo * 1.05  # pylint: disable=protected-access

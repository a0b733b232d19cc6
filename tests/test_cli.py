"""The command-line tools: evaluate, sample (language model and seq2seq), reproduce, flags."""
import json
import os
import re
import signal
import threading
import time

import jax
import numpy as np
import pytest

from seqlab import cli
from seqlab import evaluate
from seqlab import losses
from seqlab import sample
from seqlab import tasks
from seqlab import train
from seqlab import workdir as workdir_lib
from conftest import NO_COMPILATION_CACHE, load_config, run_module, signal_when


@pytest.fixture(scope='module')
def reverse_run(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp('reverse') / 'run')
  train.train_and_evaluate(load_config('reverse'), workdir)
  return workdir


@pytest.fixture(scope='module')
def charlm_run(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp('charlm') / 'run')
  train.train_and_evaluate(load_config('charlm'), workdir)
  return workdir


def test_seq2seq_run_logs_decoded_metrics_and_draws_its_curves(reverse_run):
  evals = [r for r in workdir_lib.read_metrics(reverse_run) if r['split'] == 'eval']
  assert evals
  for row in evals:
    for key in ('decode_exact_match', 'decode_token_error_rate', 'decode_sequence_error_rate',
                'decode_token_accuracy'):
      assert 0.0 <= row[key] <= (10.0 if 'error' in key else 1.0), (key, row)
    assert row['decode_sequence_error_rate'] == pytest.approx(1 - row['decode_exact_match'])
    spec = tasks.make_task(load_config('reverse').task, 0).spec
    assert set(row) - {'step', 'split', 'count'} == set(losses.eval_metrics(spec))
  assert os.path.getsize(os.path.join(reverse_run, 'learning_curves.png')) > 1000


def test_evaluate_seq2seq_greedy_and_beam(reverse_run):
  greedy = evaluate.evaluate_workdir(reverse_run, 'best')
  beam = evaluate.evaluate_workdir(reverse_run, 'latest', method='beam', beam_width=3)
  assert greedy['decode_method'] == 'greedy' and beam['decode_method'] == 'beam3'
  assert greedy['accuracy'] == beam['accuracy'] or greedy['step'] != beam['step']
  with open(os.path.join(reverse_run, 'eval_latest.json')) as f:
    assert json.load(f) == beam
  # The same figures as the run's own last eval row (greedy, the same checkpoint).
  last = [r for r in workdir_lib.read_metrics(reverse_run) if r['split'] == 'eval'][-1]
  latest = evaluate.evaluate_workdir(reverse_run, 'latest')
  assert latest['decode_exact_match'] == pytest.approx(last['decode_exact_match'])
  assert latest['loss'] == pytest.approx(last['loss'], rel=1e-5)
  # --split test: the figures the run logged once, at its end, for its last weights.
  test = evaluate.evaluate_workdir(reverse_run, 'latest', split='test')
  logged = workdir_lib.logged_test(reverse_run)['last']
  assert test['split'] == 'test' and test['step'] == logged['checkpoint_step']
  assert test['decode_exact_match'] == pytest.approx(logged['decode_exact_match'])
  assert test['loss'] == pytest.approx(logged['loss'], rel=1e-5) != latest['loss']
  with open(os.path.join(reverse_run, 'test_latest.json')) as f:
    assert json.load(f) == test


def test_sample_decodes_seq2seq_inputs_in_one_batch(reverse_run):
  items = ['abc', 'hgfedcba', 'b']
  out = sample.decode_inputs(reverse_run, items)
  assert [item for item, _, _ in out] == items
  assert all(set(text) <= set('abcdefghijklmnopqrst') for _, text, _ in out)
  alone = [sample.decode_inputs(reverse_run, [item])[0] for item in items]
  assert [t for _, t, _ in alone] == [t for _, t, _ in out]  # padding changes nothing
  with pytest.raises(ValueError, match='letters'):
    sample.decode_inputs(reverse_run, ['ab9'])
  with pytest.raises(ValueError, match='not a language-model run|seq2seq'):
    sample.sample_text(reverse_run, 'abc', 5)


def test_sample_cli_seq2seq_and_errors(reverse_run):
  proc = run_module('seqlab.sample', '--workdir', reverse_run, '--prompt', 'abc cba',
                    '--method', 'beam', '--beam_width', '2')
  assert proc.returncode == 0, proc.stderr[-2000:]
  lines = proc.stdout.strip().splitlines()
  assert lines[0].startswith('abc -> ') and lines[1].startswith('cba -> ')
  proc = run_module('seqlab.sample', '--workdir', reverse_run, '--prompt', 'a?')
  assert proc.returncode == 2 and 'letters' in proc.stderr and 'Traceback' not in proc.stderr


def test_language_model_sample_and_evaluate(charlm_run):
  texts = sample.sample_text(charlm_run, 'ab', 12, temperature=0.0, num_samples=2)
  assert len(texts) == 2 and all(t.startswith('ab') and len(t) == 14 for t in texts)
  assert texts[0] == texts[1]  # greedy
  proc = run_module('seqlab.sample', '--workdir', charlm_run, '--prompt', 'ab', '--length',
                    '12', '--temperature', '0')
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert proc.stdout.strip() == texts[0].strip()
  proc = run_module('seqlab.evaluate', '--workdir', charlm_run)
  assert proc.returncode == 0, proc.stderr[-2000:]
  result = json.loads(proc.stdout)
  assert result['checkpoint'] == 'best' and result['bpc'] > 0
  assert 'read only' not in proc.stderr and 'read_only' not in proc.stderr  # orbax's six
  with pytest.raises(ValueError, match='not a seq2seq run'):
    sample.decode_inputs(charlm_run, ['ab'])


@pytest.mark.parametrize('module', ['evaluate', 'sample'])
def test_tools_reject_missing_workdir_and_bad_flags(tmp_path, module):
  proc = run_module(f'seqlab.{module}', '--workdir', str(tmp_path))
  assert proc.returncode == 2 and 'no config.json' in proc.stderr
  proc = run_module(f'seqlab.{module}')
  assert proc.returncode == 2 and '--workdir is required' in proc.stderr
  proc = run_module(f'seqlab.{module}', '--workdri', str(tmp_path))
  assert proc.returncode == 2 and 'bad command line' in proc.stderr
  assert 'Traceback' not in proc.stderr


@pytest.mark.parametrize('module,flags', [
    ('run', ['--config', '--workdir', '--distributed', '--config.KEY=VALUE', ':VARIANT']),
    ('sweep', ['--config', '--sweep', '--mode', '--shard']),
    ('bench', ['--cells', '--memory']), ('evaluate', ['--workdir', '--checkpoint']),
    ('sample', ['--prompt', '--temperature']),
    ('export', ['--workdir', '--platforms', '--step', 'params.npz']),
    ('reproduce', ['--only', '--seeds', 'adding_t100_rnn', 'g2p_wer']),
    ('diagnose', ['--cells', '--workdir']), ('report', ['sweep'])])
def test_help_lists_the_flags(module, flags):
  """Every tool's --help prints its own flags and exits 0 (the sweep's once answered
  "Unknown command line flag 'help'", exit 2)."""
  proc = run_module(f'seqlab.{module}', '--help')
  assert proc.returncode == 0, proc.stderr[-2000:]
  for flag in flags:
    assert flag in proc.stdout, (flag, proc.stdout[-2000:])


def test_tools_import_together():
  """Each tool defines its flags in its own FlagValues: no DuplicateFlagError."""
  import seqlab.bench, seqlab.diagnose, seqlab.reproduce, seqlab.sweep  # pylint: disable=g-import-not-at-top,multiple-imports
  assert seqlab.bench.FLAGS['cells'] is not seqlab.diagnose.FLAGS['cells']
  assert seqlab.reproduce.FLAGS['workdir'] is not evaluate.FLAGS['workdir']


def test_reproduce_quick_writes_the_table_and_skips_finished_seeds(tmp_path):
  args = ('--quick', '--seeds', '2', '--only', 'adding_t100_lstm,adding_t100_rnn,mnist1d_gru',
          '--workdir', str(tmp_path))
  pytest.importorskip('mnist1d')
  proc = run_module('seqlab.reproduce', *args)
  assert proc.returncode == 0, proc.stderr[-3000:]
  trained = re.compile(r'step \d+(/\d+| eval)')  # a run's progress and eval lines
  assert trained.search(proc.stdout + proc.stderr)
  with open(tmp_path / 'reproduce.json') as f:
    rows = json.load(f)
  assert [r['name'] for r in rows] == ['adding_t100_lstm', 'adding_t100_rnn', 'mnist1d_gru']
  # What --quick trained: each entry's own config shrunk by its experiment's :quick (the
  # tanh-RNN row once showed :quick's LSTM, the same run as the LSTM row).
  assert [(r['task'], r['model']) for r in rows] == [
      ('adding shrunk by :quick', 'lstm 16 (smoke run)'),
      ('adding:rnn shrunk by :quick', 'rnn 16 (smoke run)'),
      ('mnist1d shrunk by :quick', 'gru 6 (smoke run)')]
  trained_config = json.loads((tmp_path / 'adding_t100_rnn' / 'seed0' / 'config.json').read_text())
  assert trained_config['model']['cell'] == 'rnn'
  assert all(r['seeds'] == 2 and len(r['values']) == 2 for r in rows)
  assert 0 <= rows[2]['mean'] <= 100  # accuracy in percent
  table = (tmp_path / 'reproduce.md').read_text()
  device = f'| {jax.default_backend()}: '  # e.g. 'cpu: AMD EPYC, 2 cores', 'gpu: NVIDIA H200 x1'
  assert 'Greydanus & Kobak' in table and ' ± ' in table and device in table
  for r in rows:  # each seed's test value at its best-on-validation step, beside the mean
    per_seed = ', '.join(f'{v:.4g} @ {s}' for v, s in zip(r['values'], r['best_steps']))
    assert f'| {per_seed} |' in table
    seed0 = workdir_lib.logged_test(str(tmp_path / r['name'] / 'seed0'))
    scale = 100 if r['metric'] == 'accuracy' else 1
    assert r['values'][0] == pytest.approx(seed0['best'][r['metric']] * scale)
    assert r['last_values'][0] == pytest.approx(seed0['last'][r['metric']] * scale)
  assert 'test at best-on-validation checkpoint' in table
  again = run_module('seqlab.reproduce', *args)  # finished seeds are skipped
  assert again.returncode == 0
  assert not trained.search(again.stdout + again.stderr), again.stderr[-3000:]
  assert (tmp_path / 'reproduce.md').read_text() == table
  bad = run_module('seqlab.reproduce', '--only', 'nope', '--workdir', str(tmp_path))
  assert bad.returncode == 2 and 'unknown reproduction' in bad.stderr
  # A full run refuses the --quick seeds it would otherwise skip as finished.
  full = run_module('seqlab.reproduce', '--seeds', '2', '--only', 'adding_t100_lstm',
                    '--workdir', str(tmp_path))
  assert full.returncode == 2 and 'holds a --quick run' in full.stderr, full.stderr[-3000:]
  assert not trained.search(full.stdout + full.stderr)
  for r in rows:  # the sample standard deviation
    assert r['std'] == pytest.approx(float(np.std(r['values'], ddof=1)))
  # A seed started with another config than the entry asks for now is neither skipped
  # as finished nor tabled.
  saved = tmp_path / 'adding_t100_lstm' / 'seed1' / 'config.json'
  config = json.loads(saved.read_text())
  config['train']['steps'] += 1
  saved.write_text(json.dumps(config))
  stale = run_module('seqlab.reproduce', *args)
  assert stale.returncode == 2 and 'was started with another config' in stale.stderr
  assert 'train.steps' in stale.stderr and not trained.search(stale.stdout + stale.stderr)
  other = run_module('seqlab.reproduce', '--quick', '--seeds', '1', '--only', 'mnist1d_gru',
                     '--workdir', str(tmp_path))
  assert other.returncode == 0, other.stderr[-3000:]
  assert 'adding_t100_lstm is not in the table' in other.stderr
  with open(tmp_path / 'reproduce.json') as f:  # --seeds 1 keeps the rows' 2 finished seeds
    assert [(r['name'], r['seeds']) for r in json.load(f)] == [
        ('adding_t100_rnn', 2), ('mnist1d_gru', 2)]


def test_reproduce_on_a_full_disk_stops_in_one_line(tmp_path):
  """A seed whose checkpoint does not fit (files limited to 4 KiB): one line, exit 1,
  the seed not marked finished; with room, the same command finishes it."""
  args = ('--quick', '--seeds', '1', '--only', 'adding_t100_lstm', '--workdir', str(tmp_path))
  proc = run_module('seqlab.reproduce', *args, file_limit_kib=4)
  assert proc.returncode == 1, proc.stderr[-3000:]
  assert 'seqlab: training stopped: writing a checkpoint under' in proc.stderr
  assert 'Traceback' not in proc.stderr, proc.stderr[-3000:]
  assert not (tmp_path / 'adding_t100_lstm' / 'seed0' / 'reproduce.json').exists()
  again = run_module('seqlab.reproduce', *args)
  assert again.returncode == 0, again.stderr[-3000:]
  assert (tmp_path / 'adding_t100_lstm' / 'seed0' / 'reproduce.json').exists()


@pytest.mark.parametrize('tool,args', [
    ('seqlab.sweep', ['--config', 'experiments/adding.py:quick', '--sweep', 'seed=[0,1]',
                      '--workdir', '{w}']),
    ('seqlab.reproduce', ['--quick', '--only', 'adding_t100_lstm', '--workdir', '{w}']),
    ('seqlab.evaluate', ['--workdir', '{w}']), ('seqlab.sample', ['--workdir', '{w}']),
    ('seqlab.bench', ['--quick'])])
def test_ctrl_c_while_a_tool_imports_jax_stops_it_in_one_line(tmp_path, tool, args):
  """SIGINT 0.2 s after start, once the tool's first line ran (then Python imports
  jax): exit 130 with one 'stopped' line, not a KeyboardInterrupt traceback, nor a
  run that goes on (jax's gc callback swallowed one)."""
  t0 = time.time()
  proc = signal_when(tool, [a.format(w=tmp_path / 'w') for a in args],
                     lambda: time.time() - t0 >= 0.2, sig=signal.SIGINT, handled=True,
                     env=NO_COMPILATION_CACHE)
  assert proc.returncode == 130, proc.stderr[-3000:]
  assert proc.stderr.splitlines()[-1].startswith('seqlab: SIGINT: stopped')
  assert 'Traceback' not in proc.stderr


def test_interrupt_turns_sigterm_and_sigint_into_a_flag():
  """``cli.Interrupt``, under the training loop, populations and sweeps: the signal
  sets ``.signal`` instead of ending the process, and the old handlers come back."""
  before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
  for sig, name in ((signal.SIGTERM, 'SIGTERM'), (signal.SIGINT, 'SIGINT')):
    with cli.Interrupt() as stop:
      assert stop.signal is None
      os.kill(os.getpid(), sig)  # without the handler this would end the test process
      assert stop.signal == name
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == before

  seen = []  # outside the main thread no handler can be set: no error, nothing caught
  def enter():
    with cli.Interrupt() as stop:
      seen.append((stop.signal, signal.getsignal(signal.SIGTERM)))
  thread = threading.Thread(target=enter)
  thread.start()
  thread.join()
  assert seen == [(None, before[0])]

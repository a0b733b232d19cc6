"""The config schema (seqlab/config.py) and where each of its values is checked."""
import ast
import json
import math
import os
import re
import shutil

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from seqlab import config as config_lib
from seqlab import models
from seqlab import scan
from seqlab import tasks
from seqlab import train
from seqlab import workdir as workdir_lib
from conftest import ROOT, load_config, run_module


@pytest.mark.parametrize('override,message', [
    ('--config.model.hiden_size=3', 'hiden_size'),
    ('--config.model.hidden_size=abc', 'hidden_size'),
    ('--config.model.hidden_size=-3', 'model.hidden_size must be a positive integer'),
])
def test_bad_config_fails_before_compiling_without_traceback(tmp_path, override, message):
  """The command line's own errors (an unknown key, a value of the wrong type) and one
  value the schema refuses: exit 2, one line. Every other refused value is the same
  ``ConfigError`` on its way out (``test_bad_config_values_are_refused_before_compiling``)."""
  workdir = tmp_path / 'run'
  proc = run_module('seqlab.run', '--config', 'experiments/adding.py:quick', '--workdir',
                    str(workdir), override)
  assert proc.returncode == 2, proc.stderr
  assert message in proc.stderr
  assert 'Traceback' not in proc.stderr
  assert not (workdir / 'checkpoints').exists()


@pytest.mark.parametrize('key,value,message', [
    ('model.cell', 'lstmm', 'choose one of: rnn, irnn, lstm'),
    ('optim.name', 'adm', 'choose one of: sgd, adam, adamw, rmsprop'),
    ('optim.schedule', 'cosin', 'constant'),
    ('task.name', 'nope', 'adding, copy'),
    ('task.length', -2, 'task.length'),
    ('optim.lr', -1.0, 'optim.lr must be positive'),
    ('model.unroll', -1, 'model.unroll must be a positive integer'),
    ('train.best_metric', 'acuracy', "train.best_metric='acuracy' is not an eval metric"),
    ('train.length_buckets', -1, 'train.length_buckets must be a non-negative integer'),
    ('train.length_buckets', 2, 'train.length_buckets=2 needs a fixed data set'),
])
def test_bad_config_values_are_refused_before_compiling(tmp_path, key, value, message):
  """What ``seqlab.run`` prints as its one line (``seqlab: bad config: <message>``, exit
  2), in-process: the error names the key, and nothing is written."""
  config = load_config('adding')
  section, name = key.split('.')
  config[section][name] = value
  workdir = tmp_path / 'run'
  with pytest.raises(config_lib.ConfigError, match=re.escape(message)):
    train.train_and_evaluate(config, str(workdir))
  assert not (workdir / 'checkpoints').exists()


def test_config_changes_count_what_trains(tmp_path):
  """Keys added to seqlab since a run was saved, and 'auto' values equal to the saved
  ones, are no change; a real difference is, and ``ignore`` leaves keys out."""
  config = load_config('adding')
  saved = json.loads(config.to_json_best_effort())
  saved['model']['recurrent_init'] = 'orthogonal'  # an LSTM's 'auto'
  del saved['train']['best_metric']  # a key added since
  (tmp_path / 'config.json').write_text(json.dumps(saved))
  assert workdir_lib.config_changes(str(tmp_path), config) == []
  config.model.cell = 'irnn'  # 'auto' is the identity there
  saved['model']['cell'] = 'irnn'
  (tmp_path / 'config.json').write_text(json.dumps(saved))
  assert workdir_lib.config_changes(str(tmp_path), config) == [
      "model.recurrent_init: 'orthogonal' -> 'identity'"]
  config.train.steps += 1
  assert len(workdir_lib.config_changes(str(tmp_path), config)) == 2
  assert len(workdir_lib.config_changes(str(tmp_path), config,
                                        ignore=workdir_lib.RESUMABLE)) == 1


# --- The seq2seq section ----------------------------------------------------------------

def test_seq2seq_keys_live_in_their_own_section():
  """Only the seq2seq experiments carry the section; every classifier's model section
  is free of decoder keys."""
  assert not set(config_lib.seq2seq_section()) & set(config_lib.base_config().model)
  assert 'seq2seq' not in config_lib.base_config()
  for name in ('reverse', 'g2p'):
    assert set(load_config(name).seq2seq) == set(config_lib.seq2seq_section())
  for name in ('adding', 'copy', 'charlm', 'mnist1d', 'sentiment'):
    assert 'seq2seq' not in load_config(name)
  assert load_config('reverse', 'none').seq2seq.attention == 'none'


@pytest.mark.parametrize('key, value, message', [
    ('attention', 'luong_concat',
     "seq2seq.attention='luong_concat' is not valid; choose one of: none, bahdanau, luong_dot, "
     'luong_general'),
    ('scheduled_sampling', 1.5, 'seq2seq.scheduled_sampling must be in [0, 1], got 1.5'),
    ('decoder_layers', 0, 'seq2seq.decoder_layers must be an integer >= 1, got 0'),
    ('decoder_hidden_size', -2, 'seq2seq.decoder_hidden_size must be an integer >= 0, got -2'),
])
def test_seq2seq_values_are_checked_where_used_naming_the_key(key, value, message):
  config = load_config('reverse')
  config.seq2seq[key] = value
  config_lib.validate(config)  # the schema is fine; the builder checks the value
  with pytest.raises(config_lib.ConfigError) as info:
    train.build(config)
  assert str(info.value) == message


def test_a_seq2seq_task_without_the_section_trains_with_its_defaults():
  config = load_config('reverse')
  _, with_section, _ = train.build(config)
  del config.seq2seq
  _, without, _ = train.build(config)
  assert without == with_section
  assert (without.decoder.attention, without.decoder.num_layers) == ('bahdanau', 1)
  assert without.scheduled_sampling == 0.0


def test_a_classifier_given_the_seq2seq_section_is_refused():
  config = load_config('adding')
  config.seq2seq = config_lib.seq2seq_section()
  with pytest.raises(config_lib.ConfigError, match='config.seq2seq is set, but this task trains '
                     'a sequence model, not a seq2seq one; remove the seq2seq section'):
    train.build(config)


def test_unknown_sections_and_seq2seq_keys_are_named():
  config = load_config('reverse').to_dict()
  config['seq2seq']['beam'] = 4
  with pytest.raises(config_lib.ConfigError, match='config.seq2seq.beam is not a known key; '
                     'valid keys: attention, decoder_hidden_size, decoder_layers'):
    config_lib.validate(ml_collections.ConfigDict(config))
  config = load_config('adding').to_dict()
  config['decoder'] = {}
  with pytest.raises(config_lib.ConfigError, match='config.decoder is not a known section; '
                     'valid sections: seed, task, model, optim, train, seq2seq'):
    config_lib.validate(ml_collections.ConfigDict(config))


# --- Scan options -------------------------------------------------------------------------

@pytest.mark.parametrize('key,value,message', [
    ('engine', 'parallel',
     "model.engine='parallel' is not valid; choose one of: sequential, associative, newton, auto"),
    ('engine', 'associative', "engine='associative' needs a diagonal linear"),
    ('remat', -1, 'model.remat must be a non-negative integer'),
    ('hoist', 'yes', "model.hoist='yes' is not valid; choose one of: auto, on, off"),
    ('dtype', 'float16', "model.dtype='float16' is not valid; choose one of: float32, bfloat16"),
])
def test_scan_keys_are_checked_before_compiling(tmp_path, key, value, message):
  """In-process, as ``test_bad_config_values_are_refused_before_compiling``."""
  config = load_config('adding')
  config.model[key] = value
  with pytest.raises(config_lib.ConfigError, match=re.escape(message)):
    train.train_and_evaluate(config, str(tmp_path / 'run'))
  assert not (tmp_path / 'run' / 'checkpoints').exists()


def test_config_scan_keys_reach_the_layers_as_one_options_object():
  config = load_config('adding')
  config.model.update(remat=7, unroll=3, hoist='on', dtype='bfloat16', engine='sequential')
  _, model, _ = train.build(config)
  assert model.encoder.scan == scan.ScanOptions(hoist=True, unroll=3, dtype=jnp.bfloat16,
                                                engine=scan.Engine.SEQUENTIAL, remat=7)
  assert model.dtype == jnp.bfloat16  # the head computes in the same dtype
  config.model.update(unroll=0, hoist='auto', dtype='float32', engine='auto', remat=0)
  _, model, _ = train.build(config)
  assert model.encoder.scan == scan.ScanOptions()  # the config's defaults: the measured ones


# --- Workdirs written before a key moved --------------------------------------------------

FIXTURES = os.path.join(ROOT, 'tests', 'fixtures')


def saved_config(name: str) -> dict:
  with open(os.path.join(FIXTURES, name, 'config.json')) as f:
    return json.load(f)


def test_upgrade_moves_the_seq2seq_keys_and_drops_momentum_only_where_it_does_nothing():
  old = saved_config('reverse_quick')  # written before the seq2seq section, optim adam
  assert old['model']['attention'] == 'bahdanau' and old['optim']['momentum'] == 0.9
  new = config_lib.upgrade(old)
  assert not set(config_lib.seq2seq_section()) & set(new['model'])
  assert 'seq2seq' not in new and 'momentum' not in new['optim']  # defaults; adam ignores it
  assert old['model']['attention'] == 'bahdanau'  # not modified
  old['model'].update(attention='none', decoder_layers=2)
  assert config_lib.upgrade(old)['seq2seq'] == {'attention': 'none', 'decoder_layers': 2}
  old['optim']['name'] = 'rmsprop'  # momentum changes rmsprop's updates: kept
  assert config_lib.upgrade(old)['optim']['momentum'] == 0.9
  current = json.loads(load_config('reverse').to_json_best_effort())
  assert config_lib.upgrade(current) == {**current, 'optim': {
      k: v for k, v in current['optim'].items() if k != 'momentum'}}


def test_config_changes_of_an_old_workdir_leave_out_the_moved_keys(tmp_path):
  for name in ('adding_quick', 'reverse_quick'):
    config = load_config(name.split('_')[0])
    path = os.path.join(FIXTURES, name)
    assert workdir_lib.config_changes(path, config, ignore=workdir_lib.RESUMABLE) == []
  config = load_config('adding')
  config.optim.name = 'rmsprop'  # for rmsprop, the old momentum 0.9 against today's 0.0 counts
  old = saved_config('adding_quick')
  old['optim']['name'] = 'rmsprop'
  (tmp_path / 'config.json').write_text(json.dumps(old))
  assert workdir_lib.config_changes(str(tmp_path), config, ignore=workdir_lib.RESUMABLE) == [
      'optim.momentum: 0.9 -> 0.0']


@pytest.mark.parametrize('name, experiment, steps', [
    ('adding_quick', 'adding', 40), ('reverse_quick', 'reverse', 20)])
def test_a_workdir_written_before_the_change_resumes_to_the_end(tmp_path, name, experiment, steps):
  """tests/fixtures/<name>: written by seqlab at commit 277a471 (model.attention & co.
  in the model section, optim.momentum 0.9), trained half way."""
  workdir = tmp_path / name
  shutil.copytree(os.path.join(FIXTURES, name), workdir)
  before = workdir_lib.read_metrics(str(workdir))
  proc = run_module('seqlab.run', '--config', f'experiments/{experiment}.py:quick',
                    '--workdir', str(workdir))
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert 'from scratch' not in proc.stderr
  for key in ('attention', 'scheduled_sampling', 'decoder', 'momentum'):
    assert key not in proc.stderr  # not reported as a change of config
  rows = workdir_lib.read_metrics(str(workdir))
  assert rows[:len(before)] == before
  final = [r for r in rows if r['split'] == 'eval'][-1]
  assert final['step'] == steps
  assert max(r['step'] for r in before) == steps // 2
  metric = tasks.make_task(load_config(experiment).task, 0).spec.metric
  assert math.isfinite(final[metric])
  assert sorted(r['checkpoint'] for r in rows if r['split'] == 'test') == ['best', 'last']


# --- The README's schema table --------------------------------------------------------------

def readme_schema() -> dict:
  """{dotted key: default} from README.md's 'Config schema' table: a cell of keys
  (`a`, `b`) beside a cell of as many defaults, each a Python literal or a `name`,
  with an optional note in parentheses after it."""
  with open(os.path.join(ROOT, 'README.md')) as f:
    text = f.read()
  table = text.split('### Config schema', 1)[1].split('\n## ', 1)[0]
  schema = {}
  for line in table.splitlines():
    if not line.startswith('| `'):
      continue
    keys_cell, defaults_cell = [c.strip() for c in line.strip('|').split('|')[:2]]
    keys = re.findall(r'`([\w.]+)`', keys_cell)
    defaults = [parse_default(d) for d in split_top_level(defaults_cell)]
    assert len(keys) == len(defaults), line
    schema.update(zip(keys, defaults))
  return schema


def split_top_level(cell: str) -> list[str]:
  """``cell`` split at the commas outside parentheses."""
  parts, depth, current = [], 0, ''
  for ch in cell:
    depth += {'(': 1, ')': -1}.get(ch, 0)
    if ch == ',' and depth == 0:
      parts.append(current.strip())
      current = ''
    else:
      current += ch
  return parts + [current.strip()]


def parse_default(text: str):
  text = re.sub(r'(?<=\S)\s+\(.*\)$', '', text)  # a note after the value
  if text.startswith('`'):
    return text.strip('`')
  return ast.literal_eval(text)


def flat_schema() -> dict:
  config = config_lib.base_config()
  config.seq2seq = config_lib.seq2seq_section()
  flat = {}
  for key, value in config.items():
    if isinstance(value, ml_collections.ConfigDict):
      flat.update({f'{key}.{k}': v for k, v in value.items()})
    else:
      flat[key] = value
  return flat


def test_readme_schema_table_lists_every_key_with_the_schemas_default():
  readme, schema = readme_schema(), flat_schema()
  assert sorted(set(schema) - set(readme)) == []  # keys the README does not list
  assert sorted(set(readme) - set(schema)) == []  # keys the schema does not have
  differ = {k: (readme[k], schema[k]) for k in schema if readme[k] != schema[k]}
  assert differ == {}
  assert all(type(readme[k]) is type(schema[k]) for k in schema), {
      k: (type(readme[k]), type(schema[k])) for k in schema}
@pytest.mark.parametrize('cell, recurrent_init, identity', [
    ('irnn', 'auto', True), ('irnn', 'orthogonal', False), ('rnn', 'auto', False),
    ('rnn', 'identity', True), ('lstm', 'auto', False)])
def test_config_recurrent_init_auto_keeps_the_cells_own(cell, recurrent_init, identity):
  """Through the config path: 'auto' (the default) gives the IRNN its identity and the
  others their orthogonal init; a named init overrides either."""
  cfg = config_lib.base_config()
  cfg.model.cell, cfg.model.hidden_size, cfg.task.length = cell, 6, 5
  if recurrent_init != 'auto':  # else the default
    cfg.model.recurrent_init = recurrent_init
  config_lib.validate(cfg)
  task = tasks.make_task(cfg.task, cfg.seed)
  model = models.build_model(cfg.model, task.spec)
  xs = jnp.zeros((1, 3, task.spec.input_features))
  u = model.init(jax.random.key(0), xs)['params']['encoder']['layer_0']['cell']['recurrent_kernel']
  u = np.asarray(u)[:, :6]  # the first gate's block
  np.testing.assert_allclose(u.T @ u, np.eye(6), atol=1e-5)  # orthogonal or the identity
  assert np.array_equal(u, np.eye(6)) == identity



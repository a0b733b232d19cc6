"""The config schema (seqlab/config.py) and where each of its values is checked."""
import json

import pytest

from seqlab import workdir as workdir_lib
from conftest import load_config, run_module


@pytest.mark.parametrize('override,message', [
    ('--config.model.hiden_size=3', 'hiden_size'),
    ('--config.model.hidden_size=-3', 'model.hidden_size must be a positive integer'),
    ('--config.model.hidden_size=abc', 'hidden_size'),
    ('--config.model.cell=lstmm', 'choose one of: rnn, irnn, lstm'),
    ('--config.optim.name=adm', 'choose one of: sgd, adam, adamw, rmsprop'),
    ('--config.optim.schedule=cosin', 'constant'),
    ('--config.task.name=nope', 'adding, copy'),
    ('--config.task.length=-2', 'task.length'),
    ('--config.optim.lr=-1.0', 'optim.lr must be positive'),
    ('--config.model.unroll=-1', 'model.unroll must be a non-negative integer'),
    ('--config.train.best_metric=acuracy', "train.best_metric='acuracy' is not an eval metric"),
])
def test_bad_config_fails_before_compiling_without_traceback(tmp_path, override, message):
  workdir = tmp_path / 'run'
  proc = run_module('seqlab.run', '--config', 'experiments/adding.py:quick', '--workdir',
                    str(workdir), override)
  assert proc.returncode == 2, proc.stderr
  assert message in proc.stderr
  assert 'Traceback' not in proc.stderr
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

"""Train / validation / test (issue 24): the validation slice is stratified and fixed,
selection reads the 'eval' rows alone, and the test split is read once, at the end."""
import os

import numpy as np
import pytest

from seqlab import report
from seqlab import tasks
from seqlab import train
from seqlab import workdir as workdir_lib
from seqlab.tasks import arrays
from conftest import load_config


def test_validation_rows_keep_class_proportions_and_are_fixed():
  labels = np.random.default_rng(0).permutation(np.repeat([0, 1, 2], [60, 30, 10]))
  rows, held = arrays.validation_rows(labels, 0.1)
  assert np.bincount(labels[held]).tolist() == [6, 3, 1]  # 10% of each class
  assert sorted(np.concatenate([rows, held]).tolist()) == list(range(100))  # disjoint, all
  again = arrays.validation_rows(labels, 0.1)
  assert all(np.array_equal(a, b) for a, b in zip((rows, held), again))  # deterministic
  # Uneven classes: each gives its share up to rounding, at least one example in all.
  uneven = np.repeat([0, 1], [7, 3])
  assert np.bincount(uneven[arrays.validation_rows(uneven, 0.3)[1]], minlength=2).tolist() == [2, 1]
  assert len(arrays.validation_rows(np.zeros(5), 0.01)[1]) == 1
  with pytest.raises(ValueError, match='task.valid_fraction=0.9 of 2 training examples'):
    arrays.validation_rows(np.zeros(2), 0.9)


def test_valid_fraction_zero_keeps_eval_on_test_with_a_warning(monkeypatch):
  warned = []
  monkeypatch.setattr(arrays.logging, 'warning', lambda msg, *a: warned.append(msg % a))
  train_, test = (arrays.Examples(np.arange(n, dtype=np.float32)[:, None, None],
                                  np.arange(n, dtype=np.int32) % 2) for n in (10, 4))
  splits = arrays.Splits.carve(train_, test, 0.0)
  assert splits.eval is test and splits.train is train_
  assert 'the eval split is the test set' in warned[0]
  with pytest.raises(ValueError, match=r'task.valid_fraction must be in \[0, 1\)'):
    arrays.Splits.carve(train_, test, 1.0)


class PerturbedTest:
  """A task whose 'test' targets are shifted by ``shift``: the other splits as ``task``'s."""

  def __init__(self, task, shift):
    self.task, self.shift, self.spec = task, shift, task.spec

  def batch(self, split, step, batch_size):
    batch = self.task.batch(split, step, batch_size)
    if split == 'test':
      if self.shift is None:
        raise AssertionError('the test split was read again')
      batch['targets'] = batch['targets'] + np.float32(self.shift)
    return batch

  def num_eval_batches(self, batch_size, split='eval'):
    return self.task.num_eval_batches(batch_size, split)


def _population(tmp_path, name, monkeypatch, shift):
  """Two points (a vmapped population, K = 2) of the adding task, test targets shifted."""
  make = tasks.TASKS['adding']
  monkeypatch.setitem(tasks.TASKS, 'adding', lambda cfg, seed: PerturbedTest(make(cfg, seed),
                                                                             shift))
  configs = []
  for lr in (1e-3, 3e-2):
    config = load_config('adding')
    config.task.eval_size = 32
    config.model.hidden_size = 8
    config.optim.lr = lr
    config.train.steps, config.train.eval_every, config.train.log_every = 12, 3, 3
    config.train.checkpoint_every = 12
    configs.append(config)
  workdirs = [str(tmp_path / name / f'p{i}') for i in range(len(configs))]
  results = train.train_points(configs, workdirs)
  assert all(isinstance(r, dict) for r in results), results
  return workdirs


def _best_steps(workdir):
  return sorted(os.listdir(os.path.join(workdir, 'best')))


def test_selection_never_reads_the_test_split_and_test_is_read_once(tmp_path, monkeypatch):
  """Two populations that differ in their test data alone choose the same best/ steps,
  log the same eval rows and rank the same; their test rows differ. A rerun of the
  finished runs reads the logged test rows and never the test split."""
  plain = _population(tmp_path, 'plain', monkeypatch, 0.0)
  shifted = _population(tmp_path, 'shifted', monkeypatch, 5.0)
  for a, b in zip(plain, shifted):
    rows_a, rows_b = workdir_lib.read_metrics(a), workdir_lib.read_metrics(b)
    evals = lambda rows: [(r['step'], r['mse']) for r in rows if r['split'] == 'eval']
    assert evals(rows_a) == evals(rows_b) and len(evals(rows_a)) == 4
    assert _best_steps(a) == _best_steps(b)
    test_a, test_b = workdir_lib.logged_test(a), workdir_lib.logged_test(b)
    assert sorted(test_a) == ['best', 'last'] and test_a['best']['step'] == 12
    assert test_a['last']['checkpoint_step'] == 12
    assert test_a['best']['checkpoint_step'] == int(_best_steps(a)[0])
    assert test_b['best']['mse'] > test_a['best']['mse'] + 1.0  # the shifted test was read
  ranked = lambda dirs: [r.name for r in report.rank(
      [report._row(os.path.dirname(d), {'name': os.path.basename(d)}, 'mse', 'min')
       for d in dirs], 'min')]
  assert ranked(plain) == ranked(shifted)
  count = lambda d: sum(r['split'] == 'test' for r in workdir_lib.read_metrics(d))
  before = [count(d) for d in plain]
  _population(tmp_path, 'plain', monkeypatch, None)  # finished: reading 'test' raises
  assert [count(d) for d in plain] == before == [2, 2]

"""seqlab.tasks: purity of batches, and each task against its paper, built in plain Python."""
import itertools
import math
import os

import jax
import ml_collections
import numpy as np
import pytest

from seqlab import losses
from seqlab import tasks
from seqlab.tasks import adding
from seqlab.tasks import arrays
from seqlab.tasks import base
from seqlab.tasks import charlm
from seqlab.tasks import copy
from conftest import ROOT


def cfg(**kw):
  return ml_collections.FrozenConfigDict(kw)  # frozen: make_task must never write


CONFIGS = {
    'adding': cfg(name='adding', length=12, eval_size=50),
    'copy': cfg(name='copy', length=7, eval_size=50),
}


def test_tasks_registry_lists_every_task_module():
  expected = {'adding', 'copy', 'charlm', 'mnist1d', 'uea', 'forecast', 'sentiment', 'reverse',
              'g2p', 'music', 'audio'}
  assert set(tasks.TASKS) == expected
  assert all(callable(f) for f in tasks.TASKS.values())


@pytest.mark.parametrize('name', CONFIGS)
def test_batch_is_pure_function_of_seed_split_step(name):
  task = tasks.make_task(CONFIGS[name], seed=3)
  again = tasks.make_task(CONFIGS[name], seed=3)
  a, b = task.batch('train', 5, 8), again.batch('train', 5, 8)
  assert a.keys() == b.keys()
  for k in a:
    assert a[k].dtype == b[k].dtype
    np.testing.assert_array_equal(a[k], b[k])
  others = [task.batch('train', 6, 8), task.batch('eval', 5, 8), task.batch('test', 5, 8),
            tasks.make_task(CONFIGS[name], seed=4).batch('train', 5, 8)]
  for other in others:
    assert not np.array_equal(a['inputs'], other['inputs'])


@pytest.mark.parametrize('name', CONFIGS)
def test_train_validation_and_test_splits_share_no_batch(name):
  """Three generator streams: no 'eval' or 'test' batch equals a 'train' batch or one
  of the other held-out split, and 'test' is as large as 'eval'."""
  task = tasks.make_task(CONFIGS[name], seed=0)
  train = [task.batch('train', s, 16)['inputs'] for s in range(20)]
  assert task.num_eval_batches(16, 'test') == task.num_eval_batches(16)
  held = {split: [task.batch(split, s, 16)['inputs'] for s in range(task.num_eval_batches(16))]
          for split in ('eval', 'test')}
  for ev in held['eval'] + held['test']:
    assert not any(np.array_equal(ev, t) for t in train)
  assert not any(np.array_equal(e, t) for e in held['eval'] for t in held['test'])
  with pytest.raises(ValueError, match="split='train' is not held out; choose one of: eval, test"):
    task.num_eval_batches(16, 'train')


@pytest.mark.parametrize('name', CONFIGS)
def test_batch_matches_spec(name):
  task = tasks.make_task(CONFIGS[name], seed=0)
  spec, b = task.spec, task.batch('train', 0, 4)
  assert set(b) == {'inputs', 'targets'}
  t = spec.fixed_length
  if spec.input_vocab:
    assert b['inputs'].shape == (4, t) and b['inputs'].dtype == np.int32
    assert b['inputs'].min() >= 0 and b['inputs'].max() < spec.input_vocab
  else:
    assert b['inputs'].shape == (4, t, spec.input_features) and b['inputs'].dtype == np.float32
  if spec.loss == 'cross_entropy':
    want = (4,) if spec.target == 'sequence' else (4, t)
    assert b['targets'].shape == want and b['targets'].dtype == np.int32
    assert b['targets'].min() >= 0 and b['targets'].max() < spec.num_outputs
  else:
    want = (4, spec.num_outputs) if spec.target == 'sequence' else (4, t, spec.num_outputs)
    assert b['targets'].shape == want and b['targets'].dtype == np.float32


@pytest.mark.parametrize('eval_size,batch_size,want', [(50, 16, 4), (48, 16, 3), (1, 16, 1)])
def test_num_eval_batches_covers_eval_size(eval_size, batch_size, want):
  task = tasks.make_task(cfg(name='copy', length=3, eval_size=eval_size), seed=0)
  assert task.num_eval_batches(batch_size) == want


# --- adding ------------------------------------------------------------------------


@pytest.mark.parametrize('length', [2, 7, 12, 100])
def test_adding_one_marker_in_each_half_and_target_is_their_sum(length):
  task = adding.Adding(seed=1, length=length)
  b = task.batch('train', 0, 64)
  half = length // 2
  for x, y in zip(b['inputs'].tolist(), b['targets'].tolist()):
    values, marker = [s[0] for s in x], [s[1] for s in x]
    assert all(0.0 <= v < 1.0 for v in values)
    assert all(m in (0.0, 1.0) for m in marker)
    assert sum(marker[:half]) == 1.0 and sum(marker[half:]) == 1.0
    total = sum(v for v, m in zip(values, marker) if m == 1.0)
    assert y == pytest.approx([total], rel=1e-6)


def test_adding_markers_cover_each_half_uniformly():
  b = adding.Adding(seed=0, length=10).batch('train', 0, 20000)
  counts = b['inputs'][..., 1].sum(axis=0)  # [T]: how often each step is marked
  np.testing.assert_allclose(counts / 20000, np.full(10, 0.2), atol=0.015)


def test_adding_predicting_one_scores_the_baseline():
  task = adding.Adding(seed=0, length=50)
  y = task.batch('eval', 0, 20000)['targets']
  assert abs(np.mean((y.astype(np.float64) - 1.0) ** 2) - 2 / 12) < 0.01
  assert task.spec.baseline == pytest.approx(2 / 12, abs=5e-4)


# --- copy --------------------------------------------------------------------------


def paper_copy_example(data, length):
  """Arjovsky et al. 2016, 4.1: 10 data symbols, T-1 blanks, the delimiter, 10 blanks;
  the output is T+10 blanks, then the 10 data symbols."""
  inputs = list(data) + [0] * (length - 1) + [9] + [0] * 10
  targets = [0] * (length + 10) + list(data)
  return inputs, targets


@pytest.mark.parametrize('length', [1, 7, 100])
def test_copy_layout_matches_paper(length):
  task = copy.Copy(seed=2, length=length)
  b = task.batch('train', 3, 32)
  assert b['inputs'].shape == (32, length + 20)
  for x, y in zip(b['inputs'].tolist(), b['targets'].tolist()):
    data = x[:10]
    assert all(1 <= s <= 8 for s in data)
    want_x, want_y = paper_copy_example(data, length)
    assert x == want_x
    assert y == want_y


def test_copy_data_symbols_are_uniform():
  b = copy.Copy(seed=0, length=1).batch('train', 0, 4000)
  freq = np.bincount(b['inputs'][:, :10].ravel(), minlength=10) / 40000
  np.testing.assert_allclose(freq[1:9], np.full(8, 1 / 8), atol=0.01)
  assert freq[0] == 0 and freq[9] == 0


@pytest.mark.parametrize('length', [1, 10, 100])
def test_copy_memoryless_strategy_scores_the_baseline(length):
  task = copy.Copy(seed=0, length=length)
  spec, b = task.spec, task.batch('eval', 0, 8)
  # Log-probabilities: blank certain for T+10 steps, then uniform over 1..8.
  certain_blank = np.full(9, -1e4, np.float32)
  certain_blank[0] = 0.0
  uniform_data = np.full(9, math.log(1 / 8), np.float32)
  uniform_data[0] = -1e4
  logits = np.stack([certain_blank] * (length + 10) + [uniform_data] * 10)
  logits = np.broadcast_to(logits, (8, length + 20, 9))
  _, metrics = losses.loss_and_metrics(spec, logits, b)
  want = 10 * math.log(8) / (length + 20)
  assert abs(float(metrics['cross_entropy']) - want) < 1e-5
  assert spec.baseline == pytest.approx(want, rel=1e-12)
  assert spec.metric == 'cross_entropy' and spec.metric_mode == 'min'


def test_copy_default_length_is_the_papers():
  task = tasks.make_task(cfg(name='copy'), seed=0)
  assert task.length == 100 and task.eval_size == 1000
  assert task.spec.baseline == pytest.approx(0.1733, abs=1e-4)


# --- make_task and its errors ---------------------------------------------------------


def test_make_task_unknown_name_lists_choices():
  with pytest.raises(ValueError, match=r"task.name='x' is not a known task; choose one of: "
                                       r'adding, copy'):
    tasks.make_task(cfg(name='x'), seed=0)


@pytest.mark.parametrize('task_cfg,message', [
    (cfg(name='adding', length=-3), 'task.length must be an integer >= 2, got -3'),
    (cfg(name='adding', length=1), 'task.length must be an integer >= 2, got 1'),
    (cfg(name='adding', length=2.5), 'task.length must be an integer >= 2, got 2.5'),
    (cfg(name='copy', length=-3), 'task.length must be a positive integer, got -3'),
    (cfg(name='copy', length=0), 'task.length must be a positive integer, got 0'),
    (cfg(name='copy', eval_size=0), 'task.eval_size must be a positive integer, got 0'),
    (cfg(name='adding'), "task.length is required by task 'adding'"),
    (cfg(name='copy', lenght=5), 'task.lenght is not a key of task .copy.; valid keys: '
                                 'name, length, eval_size'),
])
def test_make_task_bad_values_name_the_key(task_cfg, message):
  with pytest.raises(ValueError, match=message):
    tasks.make_task(task_cfg, seed=0)


def test_make_task_does_not_write_the_config():
  c = ml_collections.ConfigDict({'name': 'adding', 'length': 5})
  before = c.to_dict()
  task = tasks.make_task(c, seed=0)
  assert c.to_dict() == before
  assert task.eval_size == 1000


def test_batch_rejects_bad_split_step_and_batch_size():
  task = copy.Copy(seed=0, length=3)
  with pytest.raises(ValueError, match="split='valid' is not valid; choose one of: train, eval, test"):
    task.batch('valid', 0, 4)
  with pytest.raises(ValueError, match='step must be an integer >= 0, got -1'):
    task.batch('train', -1, 4)
  with pytest.raises(ValueError, match='batch_size must be a positive integer, got 0'):
    task.batch('train', 0, 0)


def test_spec_rejects_unknown_choices():
  kw = dict(input_vocab=0, input_features=2, target='sequence', num_outputs=1, loss='mse',
            metric='mse')
  base.Spec(**kw)
  with pytest.raises(ValueError, match="Spec.metric='accuracy' is not valid; choose one of"):
    base.Spec(**dict(kw, metric='accuracy'))
  with pytest.raises(ValueError, match="Spec.target='seq' is not valid; choose one of: "
                                       'sequence, steps'):
    base.Spec(**dict(kw, target='seq'))
  with pytest.raises(ValueError, match='exactly one of input_vocab'):
    base.Spec(**dict(kw, input_vocab=5))


@pytest.mark.parametrize('split', ['eval', 'test'])
@pytest.mark.parametrize('batch', [1, 3, 8])
def test_charlm_eval_scores_every_held_out_character(batch, split):
  """The held-out text is split in two, in order: validation ('eval') then 'test'. Each
  split's streams end with a masked partial chunk: the scored targets of each stream
  are its whole slice of the split's text, in order; at most batch - 1 characters are
  left over. Training keeps whole chunks and has no mask."""
  text = ''.join(np.random.default_rng(0).choice(list('abcde \n'), 1000))
  task = charlm.CharLM(seed=0, text=text, seq_len=16, test_fraction=0.2)
  held = {'eval': text[800:900], 'test': text[900:]}[split]  # 200 held out, halved
  held = task.encode(held)
  length = (len(held) - 1) // batch
  scored = [[] for _ in range(batch)]
  for k in range(task.num_eval_batches(batch, split)):
    b = task.batch(split, k, batch)
    assert bool(b['reset']) == (k == 0) and b['target_mask'].dtype == np.float32
    for i in range(batch):
      scored[i] += b['targets'][i][b['target_mask'][i] > 0].tolist()
  for i in range(batch):
    assert scored[i] == held[i * length + 1:(i + 1) * length + 1].tolist()
  assert len(held) - 1 - batch * length < batch
  assert 'target_mask' not in task.batch('train', 0, batch)


JV_QUICK = cfg(name='uea', dataset='JapaneseVowels', missing='error',
               data_dir=os.path.join(ROOT, 'experiments', 'data'))  # 18 train / 9 test cases


def test_length_buckets_see_every_example_once_per_epoch_padded_to_its_bucket():
  """Each epoch's batches hold every training example once at weight 1, each batch from
  one bucket (lengths in (previous bound, bound]) padded to that bound with nothing cut;
  the order of the buckets changes between epochs and does not depend on the seed."""
  task = tasks.make_task(JV_QUICK, seed=3)
  lengths, n = task.splits.train.lengths, len(task.splits.train)
  bucketed = tasks.length_buckets(task, 3)
  bounds = bucketed.bounds(4)
  assert len(bounds) <= 3 and bounds[-1] == lengths.max() and set(bounds) <= set(lengths)
  assert np.all(np.diff(bounds) > 0)
  per_epoch = int(arrays.bucket_batches(lengths, bounds, 4)[1].sum())
  lasts = set()
  for epoch in range(12):
    seen = np.zeros(n)
    for s in range(epoch * per_epoch, (epoch + 1) * per_epoch):
      rows, weights, bound = arrays.bucket_indices(3, s, 4, lengths, bounds)
      np.add.at(seen, rows, weights)
      below = bounds[np.searchsorted(bounds, bound) - 1] if bound > bounds[0] else 0
      assert np.all((lengths[rows] <= bound) & (lengths[rows] > below))
      assert not task.splits.train.inputs[rows, bound:].any()  # only padding is left out
      b = bucketed.batch('train', s, 4)
      np.testing.assert_array_equal(b['inputs'], task.splits.train.inputs[rows, :bound])
      np.testing.assert_array_equal(b['example_weight'], weights)
      other = arrays.bucket_indices(4, s, 4, lengths, bounds)  # another seed
      assert other[2] == bound
    np.testing.assert_array_equal(seen, np.ones(n))
    lasts.add(bound)
  assert len(lasts) > 1  # no bucket always comes last
  assert not all(np.array_equal(arrays.bucket_indices(3, s, 4, lengths, bounds)[0],
                                arrays.bucket_indices(4, s, 4, lengths, bounds)[0])
                 for s in range(per_epoch))


def test_length_buckets_leave_held_out_batches_and_refuse_tasks_without_lengths():
  task = tasks.make_task(JV_QUICK, seed=0)
  bucketed = tasks.length_buckets(task, 2)
  assert tasks.length_buckets(task, 0) is task
  assert bucketed.num_eval_batches(4) == task.num_eval_batches(4)
  for s in range(task.num_eval_batches(4)):
    a, b = task.batch('eval', s, 4), bucketed.batch('eval', s, 4)
    assert a.keys() == b.keys()
    for k in a:
      np.testing.assert_array_equal(a[k], b[k])
  longest = tasks.longest_train_batch(bucketed, 4)
  train_ = task.splits.train
  assert longest['inputs'].shape == (4, train_.lengths.max(), train_.inputs.shape[2])
  with pytest.raises(ValueError, match='train.length_buckets=2 needs a fixed data set'):
    tasks.length_buckets(tasks.make_task(CONFIGS['adding'], seed=0), 2)


@pytest.mark.parametrize('n,batch_size', [(1, 4), (2, 4), (3, 3), (4, 8)])
def test_bucket_bounds_scan_the_fewest_steps_of_any_choice(n, batch_size):
  """Against every choice of at most n bounds among the lengths (the longest among them):
  none makes an epoch scan fewer steps, sum_b ceil(n_b / B) B bound_b."""
  lengths = np.random.default_rng(n).integers(1, 30, 40).astype(np.int32)

  def scanned(bounds):
    _, batches = arrays.bucket_batches(lengths, np.asarray(bounds), batch_size)
    return int(np.sum(batches * batch_size * np.asarray(bounds)))

  values = sorted(set(lengths.tolist()))[:-1]
  best = min(scanned([*c, max(lengths)]) for k in range(n)
             for c in itertools.combinations(values, k))
  bounds = arrays.bucket_bounds(lengths, n, batch_size)
  assert len(bounds) <= n and bounds[-1] == lengths.max() and set(bounds) <= set(lengths)
  assert scanned(bounds) == best

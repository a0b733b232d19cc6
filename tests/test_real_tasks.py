"""Real-data tasks (mnist1d, uea, forecast, sentiment) on small files written here,
checked against hand-built arrays; and each of their experiments run end to end."""
import importlib.util
import json
import math
import os
import random
import statistics

import jax
import ml_collections
import numpy as np
import pytest

from seqlab import losses
from seqlab import tasks
from seqlab.tasks import arrays
from seqlab.tasks import base
from seqlab.tasks import forecast
from seqlab.tasks import mnist1d
from seqlab.tasks import sentiment
from seqlab.tasks import uea
from conftest import EXPERIMENTS, cpu_env, run_module

HAS_MNIST1D = importlib.util.find_spec('mnist1d') is not None
HAS_STATSMODELS = importlib.util.find_spec('statsmodels') is not None
needs_mnist1d = pytest.mark.skipif(not HAS_MNIST1D, reason='needs mnist1d (seqlab[data])')


def cfg(**kw):
  return ml_collections.FrozenConfigDict(kw)  # frozen: make_task must never write


# --- small data files --------------------------------------------------------------------

TOY_TRAIN = """# a toy problem: 2 channels, lengths 3, 1, 2
@problemName Toy
@timeStamps false
@missing false
@univariate false
@dimensions 2
@equalLength false
@classLabel true 2 10

@data
1.0,2.0,3.0:4.0,5.0,6.0:10
0.5:1.5:2
-1,0:2,2:2
"""
TOY_TEST = """@problemName Toy
@timeStamps false
@univariate false
@dimensions 2
@classLabel true 2 10
@data
3,3,3,3:0,0,0,0:2
1:1:10
"""


def write(path, text, encoding='utf-8'):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, 'w', encoding=encoding) as f:
    f.write(text)
  return str(path)


def write_polarity(folder, n=30):
  pos = ['good', 'great', 'fun', 'charmant']
  neg = ['bad', 'dull', 'boring', 'ennuyé']  # latin-1, as in Pang & Lee's files
  rng = random.Random(0)
  for name, words in (('rt-polarity.pos', pos), ('rt-polarity.neg', neg)):
    lines = [' '.join(rng.choice(words + ['the', 'film', 'is']) for _ in range(rng.randint(2, 9)))
             for _ in range(n)]
    write(os.path.join(folder, name), '\n'.join(lines) + '\n', encoding='latin-1')
  return str(folder)


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
  """Toy .ts files, a polarity folder, a CSV series: every non-package task's data."""
  root = tmp_path_factory.mktemp('data')
  write(root / 'Toy_TRAIN.ts', TOY_TRAIN)
  write(root / 'Toy_TEST.ts', TOY_TEST)
  write_polarity(root / 'polarity')
  write(root / 'series.csv', 'month,value\n' + ''.join(f'{i},{math.sin(i / 3) + i / 50}\n'
                                                      for i in range(80)))
  return root


def make_tasks(data_dir) -> dict:
  configs = {
      'uea': cfg(name='uea', dataset='Toy', data_dir=str(data_dir)),
      'forecast': cfg(name='forecast', csv=str(data_dir / 'series.csv'), column='value',
                      context=6, horizon=2, test_fraction=0.25, season=3),
      'sentiment': cfg(name='sentiment', path=str(data_dir / 'polarity'), test_fraction=0.3),
  }
  if HAS_MNIST1D:
    configs['mnist1d'] = cfg(name='mnist1d')
  return {name: tasks.make_task(c, seed=3) for name, c in configs.items()}


@pytest.fixture(scope='module')
def all_tasks(data_dir):
  return make_tasks(data_dir)


def test_registry_has_the_real_tasks():
  assert {'mnist1d', 'uea', 'forecast', 'sentiment'} <= set(tasks.TASKS)


# --- batches: purity, epochs, eval coverage -------------------------------------------------


def test_batch_is_a_pure_function_of_seed_split_step(data_dir, all_tasks):
  again = make_tasks(data_dir)
  for name, task in all_tasks.items():
    for split, step in (('train', 1), ('eval', 0), ('test', 0)):
      a, b = task.batch(split, step, 5), again[name].batch(split, step, 5)
      assert a.keys() == b.keys(), name
      for k in a:
        assert a[k].dtype == b[k].dtype
        np.testing.assert_array_equal(a[k], b[k], err_msg=f'{name} {split} {k}')
    assert not np.array_equal(task.batch('train', 1, 5)['inputs'],
                              task.batch('train', 2, 5)['inputs'])


def test_train_batches_walk_through_seeded_epoch_permutations():
  n, batch_size = 10, 4
  stream = np.concatenate([base.rng(7, 'train', e).permutation(n) for e in range(3)])
  for step in range(6):
    rows, weights = arrays.indices(7, 'train', step, batch_size, n)
    np.testing.assert_array_equal(rows, stream[step * batch_size:(step + 1) * batch_size])
    assert np.all(weights == 1.0)
  epoch0 = np.concatenate([arrays.indices(7, 'train', s, 5, n)[0] for s in range(2)])
  assert sorted(epoch0.tolist()) == list(range(n))  # every example once per epoch


@pytest.mark.parametrize('split', ['eval', 'test'])
@pytest.mark.parametrize('batch_size', [1, 3, 7, 64, 1001])
def test_eval_covers_the_split_exactly_once(all_tasks, batch_size, split):
  for name, task in all_tasks.items():
    test = task.splits.of(split)
    batches = [task.batch(split, s, batch_size)
               for s in range(task.num_eval_batches(batch_size, split))]
    weights = np.concatenate([b['example_weight'] for b in batches])
    assert weights.sum() == len(test), name
    assert np.all(weights[:len(test)] == 1.0) and np.all(weights[len(test):] == 0.0)
    inputs = np.concatenate([b['inputs'] for b in batches])
    np.testing.assert_array_equal(inputs[:len(test)], test.inputs, err_msg=name)
    assert all(b['inputs'].shape[0] == batch_size for b in batches)
    with pytest.raises(ValueError, match='past the held-out split'):
      task.batch(split, task.num_eval_batches(batch_size, split), batch_size)


def test_fixed_data_sets_serve_three_disjoint_splits(all_tasks):
  """Validation is carved from the training examples (none lost, none shared); the test
  split is the data set's own. Forecasting keeps time order: every training target
  precedes every validation target, which precedes every test target."""
  for name in ('uea', 'sentiment', 'mnist1d'):
    if name not in all_tasks:
      continue
    splits = all_tasks[name].splits
    assert len(splits.train) + len(splits.eval) == {'uea': 3, 'sentiment': 42,
                                                    'mnist1d': 4000}[name], name
    assert len(splits.eval) == max(1, round(0.1 * (len(splits.train) + len(splits.eval))))
    if name != 'sentiment':  # real cases are distinct (toy sentences may repeat)
      seen = {r.tobytes() for r in splits.train.inputs}
      assert not any(r.tobytes() in seen for r in splits.eval.inputs), name
  task = all_tasks['forecast']
  h = task.horizon
  assert task.starts('train')[-1] + h <= task.starts('eval')[0]
  assert task.starts('eval')[-1] + h <= task.starts('test')[0] == task.cuts[1]


def test_uea_validation_is_a_stratified_slice_of_the_training_file(data_dir):
  task = tasks.make_task(cfg(name='uea', dataset='Toy', data_dir=str(data_dir)), seed=0)
  whole = tasks.make_task(cfg(name='uea', dataset='Toy', data_dir=str(data_dir),
                              valid_fraction=0.0), seed=0)
  # 3 training cases, classes '2' (two) and '10' (one): the one held out is a '2'.
  assert task.splits.eval.targets.tolist() == [0] and len(task.splits.train) == 2
  rows = lambda e: sorted(r.tobytes() for r in e.inputs)
  assert rows(whole.splits.train) == sorted(rows(task.splits.train) + rows(task.splits.eval))
  assert whole.splits.eval is whole.splits.test  # valid_fraction=0: the old protocol


def test_padded_eval_metrics_equal_the_unpadded_split(all_tasks):
  """Through losses: zero-weight padding changes neither the metrics nor the count."""
  task = all_tasks['forecast']
  rng = np.random.default_rng(0)
  test = task.splits.eval
  predictions = rng.standard_normal(test.targets.shape).astype(np.float32)
  whole = jax.device_get(losses.loss_and_metrics(task.spec, predictions,
                                                 {'targets': test.targets})[1])
  per_batch = []
  for s in range(task.num_eval_batches(4)):
    b = task.batch('eval', s, 4)
    rows, _ = arrays.indices(task.seed, 'eval', s, 4, len(test))
    per_batch.append(jax.device_get(losses.loss_and_metrics(task.spec, predictions[rows], b)[1]))
  got = losses.aggregate(per_batch, [float(m['count']) for m in per_batch])
  assert got['count'] == len(test)
  for key in ('mse', 'mae'):
    np.testing.assert_allclose(got[key], float(whole[key]), rtol=1e-5)


# --- .ts reader and the uea task ----------------------------------------------------------


def test_ts_parser_reads_variable_length_multivariate_cases(data_dir):
  ts = uea.read_ts(str(data_dir / 'Toy_TRAIN.ts'))
  assert ts.problem == 'Toy' and ts.class_labels == ('2', '10')
  assert ts.labels == ['10', '2', '2']
  want = [[[1, 4], [2, 5], [3, 6]], [[0.5, 1.5]], [[-1, 2], [0, 2]]]
  assert len(ts.series) == 3
  for got, w in zip(ts.series, want):
    np.testing.assert_array_equal(got, np.array(w, np.float64))


def test_uea_task_normalises_by_training_statistics_and_pads(data_dir):
  task = tasks.make_task(cfg(name='uea', dataset='Toy', data_dir=str(data_dir),
                             valid_fraction=0.0), seed=0)
  assert task.classes == ['2', '10']  # numeric order, not string order
  ch0, ch1 = [1, 2, 3, 0.5, -1, 0], [4, 5, 6, 1.5, 2, 2]  # every training step
  mean = [statistics.fmean(ch0), statistics.fmean(ch1)]
  std = [statistics.pstdev(ch0), statistics.pstdev(ch1)]
  z = lambda case: [[(v - m) / s for v, m, s in zip(step, mean, std)] for step in case]
  pad = lambda case, t: case + [[0.0, 0.0]] * (t - len(case))
  train_cases = [[[1, 4], [2, 5], [3, 6]], [[0.5, 1.5]], [[-1, 2], [0, 2]]]
  test_cases = [[[3, 0]] * 4, [[1, 1]]]
  train, test = task.splits.train, task.splits.test
  np.testing.assert_allclose(train.inputs, [pad(z(c), 4) for c in train_cases], rtol=1e-6)
  np.testing.assert_allclose(test.inputs, [pad(z(c), 4) for c in test_cases], rtol=1e-6)
  np.testing.assert_array_equal(train.lengths, [3, 1, 2])
  np.testing.assert_array_equal(test.lengths, [4, 1])
  np.testing.assert_array_equal(train.targets, [1, 0, 0])
  np.testing.assert_array_equal(test.targets, [0, 1])
  spec = task.spec
  assert (spec.input_features, spec.num_outputs, spec.fixed_length) == (2, 2, None)
  b = task.batch('train', 0, 5)
  assert b['inputs'].shape == (5, 4, 2) and b['inputs'].dtype == np.float32
  assert b['lengths'].dtype == np.int32 and b['targets'].dtype == np.int32


def test_ts_parser_reads_a_univariate_ucr_file(tmp_path):
  path = write(tmp_path / 'U_TRAIN.ts', '@problemName U\n@timeStamps false\n@missing false\n'
               '@univariate true\n@equalLength true\n@seriesLength 3\n'
               '@classLabel true a b\n@data\n1,2,3:b\n4, 5, 6:a\n')
  ts = uea.read_ts(path)
  assert ts.labels == ['b', 'a'] and ts.class_labels == ('a', 'b')
  np.testing.assert_array_equal(np.stack(ts.series), [[[1], [2], [3]], [[4], [5], [6]]])


def test_ts_file_with_a_byte_order_mark(tmp_path):
  plain = uea.read_ts(write(tmp_path / 'a' / 'Toy_TRAIN.ts', TOY_TRAIN))
  marked = uea.read_ts(write(tmp_path / 'b' / 'Toy_TRAIN.ts', '\ufeff' + TOY_TRAIN))
  assert marked.labels == plain.labels
  for x, y in zip(marked.series, plain.series):
    np.testing.assert_array_equal(x, y)


def test_ts_missing_values_raise_or_are_carried_forward(tmp_path):
  text = TOY_TRAIN.replace('1.0,2.0,3.0:4.0,5.0,6.0:10', '1.0,?,3.0:?,5.0,?:10')
  write(tmp_path / 'Toy_TRAIN.ts', text)
  write(tmp_path / 'Toy_TEST.ts', TOY_TEST)
  with pytest.raises(ValueError, match="missing values; set task.missing='ffill'"):
    uea.load('Toy', str(tmp_path))
  np.testing.assert_array_equal(uea.fill_missing(uea.read_ts(str(tmp_path / 'Toy_TRAIN.ts'))
                                                 .series[0]), [[1, 5], [1, 5], [3, 5]])
  _, train, _ = uea.load('Toy', str(tmp_path), missing='ffill')
  assert np.all(np.isfinite(train.inputs))
  # Normalised by the observed values only, not the ones carried forward.
  raw = uea.read_ts(str(tmp_path / 'Toy_TRAIN.ts')).series
  for c in range(2):
    seen = np.concatenate([train.inputs[i, :len(x), c][~np.isnan(x[:, c])]
                           for i, x in enumerate(raw)])
    assert abs(seen.mean()) < 1e-6 and abs(seen.std() - 1) < 1e-6


@pytest.mark.parametrize('bad,message', [
    ('1,2:3,4:5,6:10', r'line 11: expected 2 channel\(s\)'),
    ('1,2:3:10', 'line 11: the channels have different lengths'),
    ('1,x:3,4:10', 'line 11: could not convert'),
])
def test_ts_parser_errors_name_the_line(tmp_path, bad, message):
  path = write(tmp_path / 'Bad_TRAIN.ts', TOY_TRAIN.replace('1.0,2.0,3.0:4.0,5.0,6.0:10', bad))
  with pytest.raises(ValueError, match=message):
    uea.read_ts(path)


def test_ts_with_timestamps_or_without_labels_is_refused(tmp_path):
  path = write(tmp_path / 'A.ts', TOY_TRAIN.replace('@timeStamps false', '@timeStamps true'))
  with pytest.raises(ValueError, match='@timeStamps true is not supported'):
    uea.read_ts(path)
  path = write(tmp_path / 'B.ts', TOY_TRAIN.replace('@classLabel true 2 10', '@classLabel false'))
  with pytest.raises(ValueError, match='needs @classLabel true'):
    uea.read_ts(path)


def test_uea_missing_files_name_the_paths_tried(tmp_path):
  with pytest.raises(FileNotFoundError) as e:
    tasks.make_task(cfg(name='uea', dataset='Nope', data_dir=str(tmp_path)), seed=0)
  assert str(tmp_path / 'Nope_TRAIN.ts') in str(e.value)
  assert 'task.data_dir' in str(e.value) and 'pip install aeon' in str(e.value)


def test_uea_finds_the_data_bundled_with_aeon_without_importing_it(tmp_path, monkeypatch):
  folder = tmp_path / 'site' / 'aeon' / 'datasets' / 'data' / 'Toy'
  write(folder / 'Toy_TRAIN.ts', TOY_TRAIN)
  write(folder / 'Toy_TEST.ts', TOY_TEST)
  write(tmp_path / 'site' / 'aeon' / '__init__.py', 'raise ImportError("never imported")\n')
  monkeypatch.syspath_prepend(str(tmp_path / 'site'))
  task = tasks.make_task(cfg(name='uea', dataset='Toy'), seed=0)
  assert (len(task.splits.train), len(task.splits.eval), len(task.splits.test)) == (2, 1, 2)


def test_ts_file_with_percent_comment_lines(tmp_path):
  """aeon's UnitTest files start with '%' comment lines, as some archive files do."""
  text = '%# a comment\n% another\n%\n' + TOY_TRAIN.replace('@data', '% between\n@data')
  ts = uea.read_ts(write(tmp_path / 'P_TRAIN.ts', text))
  assert ts.problem == 'Toy' and ts.labels == ['10', '2', '2']


@pytest.mark.skipif(importlib.util.find_spec('aeon') is None, reason='needs aeon')
def test_uea_reads_aeons_unit_test_data_set():
  task = tasks.make_task(cfg(name='uea', dataset='UnitTest'), seed=0)
  assert len(task.splits.test) == 22 and task.spec.num_outputs == 2


def test_sort_labels():
  assert arrays.sort_labels(['10', '2', '2', '1.5']) == ['1.5', '2', '10']
  assert arrays.sort_labels(['b', '10', 'a']) == ['10', 'a', 'b']


# --- mnist1d -------------------------------------------------------------------------------


@needs_mnist1d
def test_mnist1d_is_the_published_split_one_step_per_point(all_tasks):
  task = all_tasks['mnist1d']
  train, valid, test = task.splits.train, task.splits.eval, task.splits.test
  assert (len(train), len(valid), len(test)) == (3600, 400, 1000)
  # Stratified: each class gives a tenth of its training signals, up to rounding.
  counts = np.bincount(mnist1d.load()['y'], minlength=10)
  assert np.all(np.abs(np.bincount(valid.targets, minlength=10) - counts / 10) <= 1)
  spec = task.spec
  assert (spec.input_features, spec.num_outputs, spec.fixed_length) == (1, 10, 40)
  b = task.batch('train', 0, 100)
  assert b['inputs'].shape == (100, 40, 1) and b['inputs'].dtype == np.float32
  assert b['targets'].shape == (100,) and b['targets'].dtype == np.int32
  assert set(np.unique(train.targets)) == set(range(10))
  data = mnist1d.load()
  np.testing.assert_allclose(test.inputs[:, :, 0], data['x_test'], rtol=1e-6)


@needs_mnist1d
def test_mnist1d_shuffled_permutes_time_the_same_way_for_every_signal(all_tasks):
  plain = all_tasks['mnist1d']
  shuffled = tasks.make_task(cfg(name='mnist1d', shuffle_time=True), seed=3)
  perm = shuffled.permutation
  assert sorted(perm.tolist()) == list(range(40)) and not np.array_equal(perm, np.arange(40))
  for split in ('train', 'eval', 'test'):
    a, b = plain.splits.of(split), shuffled.splits.of(split)
    np.testing.assert_array_equal(b.inputs, a.inputs[:, perm])
    np.testing.assert_array_equal(b.targets, a.targets)


@needs_mnist1d
def test_mnist1d_shuffled_equals_the_packages_shuffled_data_and_keeps_global_rngs():
  from mnist1d.data import get_dataset_args, make_dataset  # pylint: disable=g-import-not-at-top
  args = get_dataset_args()
  args.shuffle_seq = True
  want = make_dataset(args)
  np.random.seed(123)
  random.seed(123)
  before = (np.random.random(), random.random())
  np.random.seed(123)
  random.seed(123)
  mnist1d.load.cache_clear()
  task = mnist1d.MNIST1D(seed=0, shuffle_time=True, valid_fraction=0.0)  # train: all 4000
  np.testing.assert_allclose(task.splits.train.inputs[:, :, 0], want['x'], rtol=1e-6,
                             atol=1e-6)
  np.testing.assert_allclose(task.splits.test.inputs[:, :, 0], want['x_test'], rtol=1e-6,
                             atol=1e-6)
  assert (np.random.random(), random.random()) == before  # global generators untouched


# --- forecast ------------------------------------------------------------------------------


def test_forecast_windows_match_a_hand_built_example():
  values = np.arange(1.0, 11.0)  # 1..10
  task = forecast.Forecast(seed=0, values=values, context=3, horizon=2, test_fraction=0.3,
                           valid_fraction=0.0)
  assert task.cuts == (7, 7) and task.offset == 4.0 and task.scale == 2.0  # train part 1..7
  assert task.starts('train').tolist() == [3, 4, 5]
  assert task.starts('eval').tolist() == task.starts('test').tolist() == [7, 8]
  z = lambda rows: (np.array(rows, np.float64) - 4.0) / 2.0
  train, test = task.splits.train, task.splits.test
  np.testing.assert_array_equal(train.inputs[:, :, 0], z([[1, 2, 3], [2, 3, 4], [3, 4, 5]]))
  np.testing.assert_array_equal(train.targets, z([[4, 5], [5, 6], [6, 7]]))
  np.testing.assert_array_equal(test.inputs[:, :, 0], z([[5, 6, 7], [6, 7, 8]]))
  np.testing.assert_array_equal(test.targets, z([[8, 9], [9, 10]]))
  assert test.inputs.dtype == np.float32 and task.spec.num_outputs == 2


def test_forecast_validates_on_the_last_slice_before_test():
  values = np.arange(1.0, 13.0)  # 1..12: test 10..12, validation 8..9, training 1..7
  task = forecast.Forecast(seed=0, values=values, context=3, horizon=2, test_fraction=0.25,
                           valid_fraction=0.25)
  assert task.cuts == (7, 9) and task.offset == 4.0 and task.scale == 2.0
  assert [task.starts(s).tolist() for s in ('train', 'eval', 'test')] == [[3, 4, 5], [7],
                                                                         [9, 10]]
  z = lambda rows: (np.array(rows, np.float64) - 4.0) / 2.0
  np.testing.assert_array_equal(task.splits.eval.inputs[:, :, 0], z([[5, 6, 7]]))
  np.testing.assert_array_equal(task.splits.eval.targets, z([[8, 9]]))
  np.testing.assert_array_equal(task.splits.test.targets, z([[10, 11], [11, 12]]))


def test_seasonal_naive_and_report_match_a_hand_computation():
  values = np.array([5.0, 1.0, 7.0, 2.0, 8.0, 3.0, 9.0, 4.0, 6.0, 0.0])
  task = forecast.Forecast(seed=0, values=values, context=4, horizon=3, test_fraction=0.3,
                           season=2, valid_fraction=0.0)
  # Test windows start at t = 7: targets y[7..9] = 4, 6, 0. Season 2 looks back to the
  # last observed value of the same phase: y[5], y[6], y[5] = 3, 9, 3.
  np.testing.assert_array_equal(forecast.seasonal_naive(values, np.array([7]), 3, 2),
                                [[3.0, 9.0, 3.0]])
  np.testing.assert_array_equal(forecast.seasonal_naive(values, np.array([7]), 3, 1),
                                [[9.0, 9.0, 9.0]])  # season 1: the last value
  naive_err = [3 - 4, 9 - 6, 3 - 0]
  pred = np.array([[4.5, 6.0, 1.0]])  # original units
  report = forecast.forecast_report(task, (pred - task.offset) / task.scale)
  assert report['naive_mae'] == pytest.approx(sum(abs(e) for e in naive_err) / 3)
  assert report['naive_rmse'] == pytest.approx(math.sqrt(sum(e * e for e in naive_err) / 3))
  assert report['mae_orig'] == pytest.approx((0.5 + 0 + 1) / 3)
  assert report['rmse_orig'] == pytest.approx(math.sqrt((0.25 + 0 + 1) / 3))
  assert task.spec.baseline == pytest.approx(sum(e * e for e in naive_err) / 3 / task.scale ** 2)
  with pytest.raises(ValueError, match='do not fit the 1 test windows'):
    forecast.forecast_report(task, np.zeros((2, 3)))


def test_report_errors_are_the_scaled_metrics_times_scale(all_tasks):
  task = all_tasks['forecast']
  test = task.splits.test
  noise = np.random.default_rng(0).standard_normal(test.targets.shape).astype(np.float32)
  pred = test.targets + 0.1 * noise
  _, m = losses.loss_and_metrics(task.spec, pred, {'targets': test.targets})
  report = forecast.forecast_report(task, pred)
  assert report['mae_orig'] == pytest.approx(task.scale * float(m['mae']), rel=1e-5)
  assert report['rmse_orig'] == pytest.approx(task.scale * math.sqrt(float(m['mse'])), rel=1e-5)


def test_read_column_with_and_without_header(tmp_path):
  with_header = write(tmp_path / 'a.csv', 'date,x,y\n2000,1,10\n2001,2,20\n')
  assert forecast.read_column(with_header, 'x').tolist() == [1.0, 2.0]
  assert forecast.read_column(with_header, '').tolist() == [10.0, 20.0]  # the last column
  no_header = write(tmp_path / 'b.csv', '1,10\n2,20\n3,30\n')
  assert forecast.read_column(no_header, '0').tolist() == [1.0, 2.0, 3.0]
  with pytest.raises(ValueError, match="task.column='z' is not a column.*date, x, y"):
    forecast.read_column(with_header, 'z')
  bad = write(tmp_path / 'c.csv', 'x\n1\nnope\n')
  with pytest.raises(ValueError, match='row 3'):
    forecast.read_column(bad, 'x')
  dated = write(tmp_path / 'd.csv', '1949-01,112\n1949-02,118\n')  # no header, a date column
  assert forecast.read_column(dated, '').tolist() == [112.0, 118.0]
  bom = write(tmp_path / 'e.csv', '\ufeff5\n6\n')  # a byte-order mark, as Excel writes
  assert forecast.read_column(bom, '').tolist() == [5.0, 6.0]
  with pytest.raises(ValueError, match=r"task.column='x' is not a column.*0\.\.1 \(no header\)"):
    forecast.read_column(no_header, 'x')


@pytest.mark.skipif(not HAS_STATSMODELS, reason='needs statsmodels (seqlab[data])')
def test_sunspots_is_the_yearly_series_shipped_by_statsmodels():
  task = tasks.make_task(cfg(name='forecast', series='sunspots', context=22), seed=0)
  assert len(task.values) == 309 and task.values[:4].tolist() == [5.0, 11.0, 16.0, 23.0]


def test_forecast_errors(tmp_path):
  with pytest.raises(FileNotFoundError, match=str(tmp_path / 'nope.csv')):
    tasks.make_task(cfg(name='forecast', csv=str(tmp_path / 'nope.csv'), context=3), seed=0)
  with pytest.raises(ValueError, match='set task.series .* or task.csv'):
    tasks.make_task(cfg(name='forecast', context=3), seed=0)
  with pytest.raises(ValueError, match='task.season \\(5\\) must be at most task.context'):
    forecast.Forecast(seed=0, values=np.arange(50.0), context=4, season=5)
  with pytest.raises(ValueError, match='no training, validation or test window'):
    forecast.Forecast(seed=0, values=np.arange(8.0), context=6, horizon=2)


# --- sentiment -----------------------------------------------------------------------------


def test_vocabulary_comes_from_the_training_split_only():
  labels = ['a', 'b', 'a', 'b', 'a']
  texts = ['x x y', 'x z', 'y w', 'x', 'only_here w']
  task = sentiment.make_task(0, labels, texts, test_fraction=0.4, split_seed=1,
                             valid_fraction=0.0)
  order = np.random.default_rng(1).permutation(5)
  test_texts = [texts[i] for i in order[:2]]
  train_texts = [texts[i] for i in order[2:]]
  train_tokens = {t for s in train_texts for t in s.split()}
  assert set(task.vocab) == set(sentiment.SPECIALS) | train_tokens
  assert task.vocab['<pad>'] == 0 and task.vocab['<unk>'] == 1
  test = task.splits.test
  for text, ids, n in zip(test_texts, test.inputs, test.lengths):
    want = [task.vocab.get(t, sentiment.UNK) for t in text.split()]
    assert ids[:n].tolist() == want and not ids[n:].any()
  assert test.targets.tolist() == [{'a': 0, 'b': 1}[labels[i]] for i in order[:2]]
  # With a validation split, the vocabulary is the training rows' tokens alone.
  carved = sentiment.make_task(0, labels, texts, test_fraction=0.4, split_seed=1)
  train = carved.splits.train
  used = {int(i) for ids, n in zip(train.inputs, train.lengths) for i in ids[:n]}
  assert used == set(range(2, len(carved.vocab))) and len(carved.splits.eval) == 1


def test_build_vocab_orders_by_count_and_honours_min_count_and_max_vocab():
  tokens = [['b', 'a', 'a', 'c'], ['c', 'a', 'd']]
  assert sentiment.build_vocab(tokens) == {'<pad>': 0, '<unk>': 1, 'a': 2, 'c': 3, 'b': 4,
                                           'd': 5}
  assert list(sentiment.build_vocab(tokens, min_count=2)) == ['<pad>', '<unk>', 'a', 'c']
  assert list(sentiment.build_vocab(tokens, max_vocab=1)) == ['<pad>', '<unk>', 'a']


def test_polarity_folder_layout(data_dir):
  task = tasks.make_task(cfg(name='sentiment', path=str(data_dir / 'polarity'),
                             test_fraction=0.25), seed=0)
  splits = task.splits
  assert task.classes == ['neg', 'pos']
  assert len(splits.train) + len(splits.eval) + len(splits.test) == 60
  assert len(splits.test) == 15
  assert 'ennuyé' in task.vocab or 'charmant' in task.vocab  # read as latin-1
  b = task.batch('train', 0, 8)
  assert b['inputs'].dtype == np.int32 and b['inputs'].max() < task.spec.input_vocab
  assert task.spec.input_vocab == len(task.vocab) and task.spec.num_outputs == 2


@pytest.mark.parametrize('name,text', [
    ('with_header.csv', 'label,text\npos,"good, really good"\nneg,bad\npos,fine\nneg,poor\n'),
    ('no_header.csv', 'pos,"good, really good"\nneg,bad\npos,fine\nneg,poor\n'),
    ('data.tsv', 'pos\tgood, really good\nneg\tbad\npos\tfine\nneg\tpoor\n'),
    ('bom.csv', '\ufefflabel,text\npos,"good, really good"\nneg,bad\npos,fine\nneg,poor\n'),
])
def test_csv_and_tsv_layouts(tmp_path, name, text):
  labels, texts = sentiment.read_examples(write(tmp_path / name, text))
  assert labels == ['pos', 'neg', 'pos', 'neg']
  assert texts == ['good, really good', 'bad', 'fine', 'poor']


def test_char_level_truncation_and_split_determinism():
  texts = ['abcdef', 'ab', 'abc', 'zz', 'a', 'bb']
  labels = ['1', '0', '1', '0', '1', '0']
  a = sentiment.make_task(0, labels, texts, level='char', max_length=4, test_fraction=0.5)
  b = sentiment.make_task(5, labels, texts, level='char', max_length=4, test_fraction=0.5)
  a, b = a.splits, b.splits
  np.testing.assert_array_equal(a.test.inputs, b.test.inputs)  # split_seed, not seed
  np.testing.assert_array_equal(a.eval.inputs, b.eval.inputs)
  assert a.train.inputs.shape[1] == 4 and a.train.lengths.max() <= 4
  c = sentiment.make_task(0, labels, texts, level='char', test_fraction=0.5,
                          split_seed=1).splits
  assert not np.array_equal(a.test.targets, c.test.targets) or not np.array_equal(
      a.test.lengths, c.test.lengths)


def test_sentiment_missing_files(tmp_path):
  with pytest.raises(FileNotFoundError, match=str(tmp_path / 'nope.csv')):
    tasks.make_task(cfg(name='sentiment', path=str(tmp_path / 'nope.csv')), seed=0)
  with pytest.raises(FileNotFoundError, match='rt-polarity.neg does not exist'):
    tasks.make_task(cfg(name='sentiment', path=str(tmp_path)), seed=0)
  with pytest.raises(ValueError, match="task.path is required by task 'sentiment'"):
    tasks.make_task(cfg(name='sentiment', path=''), seed=0)


# --- config keys ----------------------------------------------------------------------------


@pytest.mark.parametrize('task_cfg,message', [
    (cfg(name='mnist1d', shufle_time=True), 'task.shufle_time is not a key of task .mnist1d.; '
                                            'valid keys: name, shuffle_time'),
    (cfg(name='mnist1d', shuffle_time='yes'), 'task.shuffle_time must be True or False'),
    (cfg(name='uea', dataset='X', datadir='.'), 'valid keys: name, dataset, data_dir, missing'),
    (cfg(name='uea', dataset='Toy', missing='drop'), "task.missing='drop' is not valid"),
    (cfg(name='uea'), "task.dataset is required by task 'uea'"),
    (cfg(name='forecast', csv='x.csv', context=3, horizon=0),
     'task.horizon must be a positive integer, got 0'),
    (cfg(name='forecast', csv='x.csv', context=3, lag=2), 'valid keys: name, series, csv'),
    (cfg(name='forecast', series='nile', context=3), "task.series='nile' is not valid"),
    (cfg(name='sentiment', path='p', level='byte'), "task.level='byte' is not valid"),
    (cfg(name='sentiment', path='p', max_len=5), 'valid keys: name, path, level'),
])
def test_bad_task_keys_and_values_name_the_key(tmp_path, task_cfg, message):
  write(tmp_path / 'x.csv', 'v\n' + '\n'.join(str(i) for i in range(40)) + '\n')
  write(tmp_path / 'p' / 'rt-polarity.pos', 'good\nfine\n')
  write(tmp_path / 'p' / 'rt-polarity.neg', 'bad\npoor\n')
  write(tmp_path / 'Toy_TRAIN.ts', TOY_TRAIN)
  write(tmp_path / 'Toy_TEST.ts', TOY_TEST)
  fixed = {k: (os.path.join(tmp_path, v) if k in ('csv', 'path') else v)
           for k, v in task_cfg.items()}
  if fixed['name'] == 'uea':
    fixed['data_dir'] = str(tmp_path)
  with pytest.raises(ValueError, match=message):
    tasks.make_task(cfg(**fixed), seed=0)


# --- experiments end to end -----------------------------------------------------------------


@pytest.mark.parametrize('name', sorted(
    os.path.splitext(f)[0] for f in os.listdir(EXPERIMENTS) if f.endswith('.py')))
def test_experiment_quick_runs_end_to_end(tmp_path, name):
  """README: every experiment has a ``:quick`` variant that finishes in seconds after
  ``pip install -e ".[test]"``: with no override, no download and no data path (the
  UEA and sentiment ones read the samples in experiments/data; they once needed aeon's
  files or task.path). Data a task makes on first use (music's parsed chorales, the
  synthetic spoken digits) goes to a cache under tmp_path."""
  workdir = tmp_path / 'run'
  proc = run_module('seqlab.run', '--config', f'experiments/{name}.py:quick', '--workdir',
                    str(workdir), env=dict(cpu_env(), XDG_CACHE_HOME=str(tmp_path / 'cache')))
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert 'final eval:' in proc.stdout
  with open(workdir / 'metrics.jsonl') as f:
    evals = [r for r in map(json.loads, f) if r['split'] == 'eval']
  assert evals and all(np.isfinite(r['loss']) for r in evals)

"""Time-series classification from the UEA/UCR archives' ``.ts`` files.

Multivariate (UEA, Bagnall et al. 2018) and univariate (UCR, Dau et al. 2019) problems
ship as ``<Name>_TRAIN.ts`` and ``<Name>_TEST.ts``, the published split. The reader
takes the archive's format (as written by sktime/aeon):

  # comment lines (or % comment lines)
  @problemName JapaneseVowels
  @timeStamps false            (true is not supported)
  @missing false
  @univariate false
  @dimensions 12
  @equalLength false
  @seriesLength 29             (equal-length problems)
  @classLabel true 1 2 3 ...
  @data
  1.86,1.89,...:-0.21,-0.19,...:...:1      (one case a line: channels separated by
                                             ':', values by ',', the label last)

Lengths may vary between cases (batches are padded and carry 'lengths'); the
channels of one case must have the same length. Missing values ('?' or NaN) raise
ValueError unless ``task.missing='ffill'``, which carries the last observed value
forward in each channel (a leading gap takes the first observed value). Each channel
is z-normalised with the mean and standard deviation of the training split's valid
steps. Class labels become 0..C-1 in sorted order (numeric order when every label
is a number). The validation ('eval') split is ``task.valid_fraction`` of the
training cases, stratified by class (``arrays.Splits.carve``); 'test' is the
``_TEST.ts`` file. The normalisation statistics come from the whole training file.

Files are looked up in ``task.data_dir`` (``<dir>/<Name>_TRAIN.ts`` or
``<dir>/<Name>/<Name>_TRAIN.ts``); when it is empty, in the data sets bundled with an
installed ``aeon`` or ``sktime`` (``<package>/datasets/data/<Name>/``, found without
importing the package; they ship BasicMotions, JapaneseVowels and a few others).
"""
import dataclasses
import functools
import importlib.util
import os

import numpy as np

from seqlab.tasks import arrays
from seqlab.tasks import base

PACKAGES = ('aeon', 'sktime')  # installed packages whose bundled data sets are searched
MISSING = ('error', 'ffill')


@dataclasses.dataclass(frozen=True, eq=False)
class TsFile:
  """A parsed ``.ts`` file: ``series`` float64 [length_i, channels] per case (NaN where
  missing), ``labels`` the cases' label strings, ``class_labels`` the declared labels.
  Every case has ``channels`` channels (@dimensions, else those of the first case)."""
  problem: str
  series: list
  labels: list
  class_labels: tuple

  @property
  def channels(self) -> int:
    return self.series[0].shape[1]


def _parse_bool(value: str, tag: str, path: str) -> bool:
  if value.lower() not in ('true', 'false'):
    raise ValueError(f'{path}: {tag} must be true or false, got {value!r}')
  return value.lower() == 'true'


def _parse_case(line: str, line_no: int, path: str, channels: int | None):
  """'v,v,...:v,v,...:label' -> (float64 [length, channels], label)."""
  *fields, label = line.split(':')
  if not fields or (channels is not None and len(fields) != channels):
    raise ValueError(f'{path}, line {line_no}: expected {channels or "at least 1"} '
                     f'channel(s) and a class label separated by ":", got {len(fields)} '
                     'channel(s)')
  try:
    values = [[np.nan if v.strip() == '?' else float(v) for v in f.split(',')] for f in fields]
  except ValueError as e:
    raise ValueError(f'{path}, line {line_no}: {e}') from None
  if len({len(v) for v in values}) != 1:
    raise ValueError(f'{path}, line {line_no}: the channels have different lengths '
                     f'{[len(v) for v in values]}; seqlab needs one length per case')
  return np.array(values, np.float64).T, label.strip()


def _channels(header: dict, path: str) -> int | None:
  """Channels declared by @dimensions (or @univariate true), None if undeclared."""
  if '@dimensions' in header:
    try:
      return base.check_int('@dimensions', int(header['@dimensions']))
    except ValueError:
      raise ValueError(f'{path}: @dimensions must be a positive integer, got '
                       f'{header["@dimensions"]!r}') from None
  if _parse_bool(header.get('@univariate', 'false'), '@univariate', path):
    return 1
  return None


@functools.lru_cache(maxsize=8)
def read_ts(path: str) -> TsFile:
  """Parses the ``.ts`` file at ``path`` (see the module docstring)."""
  header, series, labels = {}, [], []
  with open(path, encoding='utf-8-sig') as f:  # skips a byte-order mark
    in_data, channels = False, None
    for line_no, raw in enumerate(f, 1):
      line = raw.strip()
      if not line or line.startswith(('#', '%')):
        continue
      if in_data:
        x, label = _parse_case(line, line_no, path, channels)
        channels = x.shape[1]  # undeclared: every case as the first
        series.append(x)
        labels.append(label)
      elif line.lower() == '@data':
        in_data, channels = True, _channels(header, path)
      elif line.startswith('@'):
        tag, _, value = line.partition(' ')
        header[tag.lower()] = value.strip()
      else:
        raise ValueError(f'{path}, line {line_no}: expected a header tag (@...) before @data')
  if not in_data:
    raise ValueError(f'{path}: no @data line')
  if _parse_bool(header.get('@timestamps', 'false'), '@timeStamps', path):
    raise ValueError(f'{path}: @timeStamps true is not supported; use the archive files '
                     'without time stamps')
  class_label = header.get('@classlabel', '').split()
  if not class_label or not _parse_bool(class_label[0], '@classLabel', path):
    raise ValueError(f'{path}: needs @classLabel true and the class labels (a '
                     'classification problem)')
  if not series:
    raise ValueError(f'{path}: no cases after @data')
  return TsFile(problem=header.get('@problemname', ''), series=series, labels=labels,
                class_labels=tuple(class_label[1:]))


def fill_missing(x: np.ndarray) -> np.ndarray:
  """[length, channels] with NaN -> each channel's last observed value carried forward
  (the first observed value before it); a channel with no value becomes 0."""
  out = x.copy()
  for c in range(x.shape[1]):
    seen = np.flatnonzero(~np.isnan(x[:, c]))
    if len(seen) == 0:
      out[:, c] = 0.0
      continue
    last = np.maximum.accumulate(np.where(np.isnan(x[:, c]), -1, np.arange(len(x))))
    out[:, c] = x[np.maximum(last, seen[0]), c]
  return out


def find_files(dataset: str, data_dir: str) -> tuple[str, str]:
  """Paths of ``<dataset>_TRAIN.ts`` and ``_TEST.ts``; FileNotFoundError naming the tried."""
  if data_dir:
    folders = [data_dir, os.path.join(data_dir, dataset)]
  else:
    folders = []
    for package in PACKAGES:
      spec = importlib.util.find_spec(package)
      if spec is not None and spec.submodule_search_locations:
        folders.append(os.path.join(spec.submodule_search_locations[0], 'datasets', 'data',
                                    dataset))
  for folder in folders:
    paths = tuple(os.path.join(folder, f'{dataset}_{s}.ts') for s in ('TRAIN', 'TEST'))
    if all(os.path.exists(p) for p in paths):
      return paths
  tried = ', '.join(os.path.join(f, f'{dataset}_TRAIN.ts') for f in folders) or (
      f'nothing: task.data_dir is empty and neither {" nor ".join(PACKAGES)} is installed')
  raise FileNotFoundError(
      f'no {dataset}_TRAIN.ts and {dataset}_TEST.ts for task.dataset={dataset!r}; tried '
      f'{tried}. Set task.data_dir to a folder holding both files (from '
      'timeseriesclassification.com), or pip install aeon, which bundles a few data sets')


def _examples(ts: TsFile, classes: list[str], missing: str, stats, path: str) -> arrays.Examples:
  """Cases -> normalised, padded Examples (labels as indices into ``classes``)."""
  series = []
  for i, x in enumerate(ts.series):
    if np.isnan(x).any():
      if missing == 'error':
        raise ValueError(f'{path}: case {i} has missing values; set task.missing=\'ffill\' '
                         'to carry the last observed value forward')
      x = fill_missing(x)
    series.append(((x - stats[0]) / stats[1]).astype(np.float32))
  unknown = sorted(set(ts.labels) - set(classes))
  if unknown:
    raise ValueError(f'{path}: class label {unknown[0]!r} is not one of the declared '
                     f'{", ".join(classes)}')
  index = {c: i for i, c in enumerate(classes)}
  inputs, lengths = arrays.pad_sequences(series)
  return arrays.Examples(inputs=inputs, targets=np.array([index[l] for l in ts.labels], np.int32),
                         lengths=lengths)


def channel_stats(series: list) -> tuple[np.ndarray, np.ndarray]:
  """Per-channel (mean, std) over the observed steps of ``series`` (NaN, missing, left
  out: not the values ``fill_missing`` carries forward); std 0 or no value -> 1."""
  steps = np.concatenate(series)
  observed = ~np.isnan(steps)
  count = np.maximum(observed.sum(0), 1)
  mean = np.where(observed, steps, 0).sum(0) / count
  std = np.sqrt((np.where(observed, steps - mean, 0) ** 2).sum(0) / count)
  return mean, np.where(std > 0, std, 1.0)


def normalisation(task_cfg) -> tuple[np.ndarray, np.ndarray]:
  """The per-channel (mean, std) that ``load`` normalises ``task_cfg``'s problem with:
  ``channel_stats`` of its training file (for ``seqlab.export``'s manifest)."""
  train_path, _ = find_files(task_cfg['dataset'], task_cfg.get('data_dir', ''))
  return channel_stats(read_ts(train_path).series)


def load(dataset: str, data_dir: str = '', missing: str = 'error'
         ) -> tuple[list[str], arrays.Examples, arrays.Examples]:
  """(class labels, train, test) of ``dataset``: normalised by the training statistics,
  padded to the longest case of either split."""
  if missing not in MISSING:
    raise ValueError(f'task.missing={missing!r} is not valid; choose one of: '
                     f'{", ".join(MISSING)}')
  train_path, test_path = find_files(dataset, data_dir)
  train_ts, test_ts = read_ts(train_path), read_ts(test_path)
  if train_ts.channels != test_ts.channels:
    raise ValueError(f'{test_path} has {test_ts.channels} channel(s) per case but '
                     f'{train_path} has {train_ts.channels}; the train and test files must '
                     'come from the same problem (the same @dimensions): replace one so that '
                     'both match')
  classes = arrays.sort_labels(train_ts.class_labels or train_ts.labels)
  stats = channel_stats(train_ts.series)
  train = _examples(train_ts, classes, missing, stats, train_path)
  test = _examples(test_ts, classes, missing, stats, test_path)
  length = max(train.inputs.shape[1], test.inputs.shape[1])
  return classes, _pad_to(train, length), _pad_to(test, length)


def _pad_to(examples: arrays.Examples, length: int) -> arrays.Examples:
  """Zero-pads the time axis of ``examples`` to ``length``."""
  extra = length - examples.inputs.shape[1]
  return dataclasses.replace(examples, inputs=np.pad(examples.inputs,
                                                     ((0, 0), (0, extra), (0, 0))))


@dataclasses.dataclass(frozen=True, eq=False)
class UEA:
  """A ``.ts`` classification problem: inputs float32 [batch, time, channels], targets
  int32 [batch], lengths int32 [batch] (in every batch, so the keys never change).

  ``classes[i]`` is the label string of class i.
  """
  seed: int
  classes: list
  splits: arrays.Splits

  @property
  def spec(self) -> base.Spec:
    parts = (self.splits.train, self.splits.eval, self.splits.test)
    t = parts[0].inputs.shape[1]
    equal = all(np.all(e.lengths == t) for e in parts)
    return base.Spec(input_vocab=0, input_features=parts[0].inputs.shape[2],
                     target='sequence', num_outputs=len(self.classes), loss='cross_entropy',
                     metric='accuracy', fixed_length=t if equal else None)

  def batch(self, split: str, step: int, batch_size: int) -> dict[str, np.ndarray]:
    """inputs [B, T, channels], targets [B], lengths [B], example_weight [B]."""
    return self.splits.batch(self.seed, split, step, batch_size)

  def num_eval_batches(self, batch_size: int, split: str = 'eval') -> int:
    return self.splits.num_batches(batch_size, split)


def from_config(task_cfg, seed: int) -> UEA:
  """``task.dataset`` (required, e.g. 'JapaneseVowels'), ``task.data_dir`` (default: the
  data bundled with aeon or sktime), ``task.missing`` ('error' or 'ffill'),
  ``task.valid_fraction`` (default 0.1)."""
  cfg = base.read_config(task_cfg, {'dataset': None, 'data_dir': '', 'missing': 'error',
                                    'valid_fraction': arrays.VALID_FRACTION})
  if not isinstance(cfg['dataset'], str) or not cfg['dataset']:
    raise ValueError(f'task.dataset must name a problem (e.g. JapaneseVowels), got '
                     f'{cfg["dataset"]!r}')
  base.check_int('seed', seed, minimum=0)
  classes, train, test = load(cfg['dataset'], cfg['data_dir'], cfg['missing'])
  return UEA(seed, classes, arrays.Splits.carve(train, test, cfg['valid_fraction']))

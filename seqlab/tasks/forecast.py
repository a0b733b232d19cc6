"""Forecasting a real univariate series: ``context`` past values -> the next ``horizon``.

Series that need no download: yearly sunspot numbers 1700-2008 shipped by statsmodels
(``task.series='sunspots'``), monthly airline passengers 1949-1960 (Box & Jenkins)
shipped by aeon or sktime (``'airline'``); or any numeric column of a CSV file
(``task.csv``, ``task.column``: a header name, a 0-based index, or '' for the last).

The split is chronological: the last ``test_fraction`` of the values are the test
part, and the last ``valid_fraction`` of the values before it the validation part
(default 0.1; 0: none, 'eval' reads the test windows, with a warning), so training,
validation and test follow one another in time. A window whose targets start at
time t has inputs y[t-C .. t-1] and targets y[t .. t+H-1]; training windows lie
wholly in the training part, validation ('eval') and test windows are every window
whose targets lie in their part (their inputs may reach back into the parts before,
as when forecasting from the end of the training data). Values are scaled by the
training part's mean and standard deviation, z = (y - mean) / std, and the model is
trained on the MSE of the scaled targets.

Because the scaling is one affine map, the errors in the series' own units are the
scaled ones times std: MAE = std * mae and RMSE = std * sqrt(mse) over the same
windows. ``forecast_report`` gives them beside the seasonal-naive forecast on the
same test windows: y^[t+h] = y[t+h - m (floor(h/m) + 1)] for h = 0..H-1, the value
one season (``task.season`` m) back that was already observed (m = 1: the last
value). ``Spec.baseline`` is that forecast's MSE in scaled units on the test
windows, the test 'mse' the model has to beat.
"""
import csv
import dataclasses
import functools
import importlib.util
import math
import os

import numpy as np

from seqlab.tasks import arrays
from seqlab.tasks import base

# name -> (packages that may ship it, path inside the package, column)
SERIES = {
    'sunspots': (('statsmodels',), ('datasets', 'sunspots', 'sunspots.csv'), 'SUNACTIVITY'),
    'airline': (('aeon', 'sktime'), ('datasets', 'data', 'Airline', 'Airline.csv'),
                'Passengers'),
}


def shipped_csv(series: str) -> tuple[str, str]:
  """(path, column) of a series shipped by an installed package, found without importing it."""
  if series not in SERIES:
    raise ValueError(f'task.series={series!r} is not valid; choose one of: '
                     f'{", ".join(SERIES)}, or set task.csv to a CSV file')
  packages, parts, column = SERIES[series]
  tried = []
  for package in packages:
    spec = importlib.util.find_spec(package)
    if spec is not None and spec.submodule_search_locations:
      path = os.path.join(spec.submodule_search_locations[0], *parts)
      if os.path.exists(path):
        return path, column
      tried.append(path)
  raise FileNotFoundError(
      f'task.series={series!r} reads {"/".join(parts)} shipped by '
      f'{" or ".join(packages)}; tried {", ".join(tried) or "nothing (not installed)"}. '
      f'pip install {packages[0]}, or set task.csv to a CSV file holding the series')


def _is_number(text: str) -> bool:
  """Whether ``text`` reads as a finite float."""
  try:
    return math.isfinite(float(text))
  except ValueError:
    return False


@functools.lru_cache(maxsize=8)
def read_column(path: str, column: str = '') -> np.ndarray:
  """The values float64 [n] of one column of the CSV file at ``path``, in file order.

  ``column`` is a header name, a 0-based index, or '' for the last column. The first
  row is a header when the chosen column's cell there is not a number (so a date
  column beside the values does not make it one), or, for a name, when any cell is
  not. A UTF-8 byte-order mark is skipped.
  """
  if not os.path.exists(path):
    raise FileNotFoundError(f'task.csv={path!r} does not exist; point it at a CSV file, or '
                            f'use task.series (one of: {", ".join(SERIES)})')
  with open(path, newline='', encoding='utf-8-sig') as f:
    rows = [r for r in csv.reader(f) if any(c.strip() for c in r)]
  if not rows:
    raise ValueError(f'{path} holds no rows')
  by_name = column != '' and not column.isdigit()
  index = len(rows[0]) - 1 if column == '' else int(column) if not by_name else None
  if by_name:
    titled = not all(_is_number(c) for c in rows[0])
  else:
    titled = index < len(rows[0]) and not _is_number(rows[0][index])
  header = [c.strip() for c in rows[0]] if titled else None
  body = rows[1:] if header else rows
  if by_name and header and column in header:
    index = header.index(column)
  elif by_name:
    raise ValueError(f'task.column={column!r} is not a column of {path}; columns: '
                     f'{", ".join(header) if header else f"0..{len(rows[0]) - 1} (no header)"}')
  values = []
  for line, row in enumerate(body, 2 if header else 1):
    if index >= len(row) or not _is_number(row[index]):
      raise ValueError(f'{path}, row {line}: column {column or index!r} is not a finite number: '
                       f'{row[index] if index < len(row) else "(missing)"!r}')
    values.append(float(row[index]))
  return np.array(values, np.float64)


def windows(values: np.ndarray, starts: np.ndarray, context: int, horizon: int
            ) -> tuple[np.ndarray, np.ndarray]:
  """Inputs [k, context] = values[t - context: t] and targets [k, horizon] =
  values[t: t + horizon] for each target start t in ``starts``."""
  inputs = np.stack([values[t - context:t] for t in starts])
  targets = np.stack([values[t:t + horizon] for t in starts])
  return inputs, targets


def seasonal_naive(values: np.ndarray, starts: np.ndarray, horizon: int, season: int
                   ) -> np.ndarray:
  """[k, horizon]: y^[t + h] = y[t + h - season (h // season + 1)], observed before t."""
  h = np.arange(horizon)
  return values[starts[:, None] + h - season * (h // season + 1)]


@dataclasses.dataclass(frozen=True, eq=False)
class Forecast:
  """Windows of ``values`` (float64 [n], original units): inputs float32 [batch, context, 1]
  and targets float32 [batch, horizon], both scaled by the training statistics."""
  seed: int
  values: np.ndarray
  context: int
  horizon: int = 1
  test_fraction: float = 0.2
  season: int = 1
  valid_fraction: float = arrays.VALID_FRACTION

  def __post_init__(self):
    base.check_int('seed', self.seed, minimum=0)
    base.check_int('task.context', self.context)
    base.check_int('task.horizon', self.horizon)
    base.check_int('task.season', self.season)
    if self.season > self.context:
      raise ValueError(f'task.season ({self.season}) must be at most task.context '
                       f'({self.context}): the seasonal-naive forecast reads the inputs')
    arrays.check_fraction('task.test_fraction', self.test_fraction)
    arrays.check_fraction('task.valid_fraction', self.valid_fraction, low_open=False)
    n, (valid, test) = len(self.values), self.cuts
    if valid - self.horizon < self.context or not all(map(len, map(self.starts, base.HELD_OUT))):
      raise ValueError(f'{n} values split at {valid} (validation) and {test} (test) leave no '
                       f'training, validation or test window of context {self.context} + '
                       f'horizon {self.horizon}; use a longer series, a shorter context or '
                       'horizon, or another test_fraction or valid_fraction')
    if not self.valid_fraction:
      arrays.warn_eval_is_test()

  @property
  def cuts(self) -> tuple[int, int]:
    """Indices of the first validation and the first test value (equal without validation)."""
    test = len(self.values) - round(self.test_fraction * len(self.values))
    return test - (max(1, round(self.valid_fraction * test)) if self.valid_fraction else 0), test

  @property
  def offset(self) -> float:
    """The training part's mean (scaled = (y - offset) / scale)."""
    return float(self.values[:self.cuts[0]].mean())

  @property
  def scale(self) -> float:
    """The training part's standard deviation (1 if it is 0)."""
    return float(self.values[:self.cuts[0]].std()) or 1.0

  def starts(self, split: str) -> np.ndarray:
    """Target start times of the split's windows, in time order: targets wholly in the
    split's part ('eval' without a validation part: the test windows)."""
    valid, test = self.cuts
    ends = {'train': (self.context, valid), 'eval': (valid, test) if valid < test else
            (test, len(self.values)), 'test': (test, len(self.values))}
    first, end = ends[split]
    return np.arange(first, end - self.horizon + 1)

  @functools.cached_property
  def splits(self) -> arrays.Splits:
    """The windows of each split, scaled: inputs float32 [k, context, 1], targets
    [k, horizon], in time order."""
    scaled = (self.values - self.offset) / self.scale

    def part(split: str) -> arrays.Examples:
      inputs, targets = windows(scaled, self.starts(split), self.context, self.horizon)
      return arrays.Examples(inputs=inputs.astype(np.float32)[:, :, None],
                             targets=targets.astype(np.float32))

    return arrays.Splits(*(part(s) for s in base.SPLITS))

  @property
  def spec(self) -> base.Spec:
    naive = (seasonal_naive(self.values, self.starts('test'), self.horizon, self.season)
             - windows(self.values, self.starts('test'), self.context, self.horizon)[1])
    return base.Spec(input_vocab=0, input_features=1, target='sequence',
                     num_outputs=self.horizon, loss='mse', metric='mse',
                     baseline=float(np.mean((naive / self.scale) ** 2)),
                     fixed_length=self.context)

  def batch(self, split: str, step: int, batch_size: int) -> dict[str, np.ndarray]:
    """inputs [B, context, 1], targets [B, horizon], example_weight [B] (scaled units)."""
    return self.splits.batch(self.seed, split, step, batch_size)

  def num_eval_batches(self, batch_size: int, split: str = 'eval') -> int:
    return self.splits.num_batches(batch_size, split)


def forecast_report(task: Forecast, predictions) -> dict[str, float]:
  """Test errors in the series' units, beside the seasonal-naive forecast's.

  Args:
    task: the ``Forecast`` task.
    predictions: the model's outputs (scaled units) on the test windows, in order,
      [windows, horizon]: the test batches concatenated, zero-weight rows dropped.
  Returns:
    'mae_orig', 'rmse_orig' (the model), 'naive_mae', 'naive_rmse' (seasonal naive,
    season ``task.season``), each over every test window and horizon step, and
    'windows', their number.
  """
  starts = task.starts('test')
  predictions = np.asarray(predictions, np.float64)
  if predictions.shape != (len(starts), task.horizon):
    raise ValueError(f'predictions of shape {predictions.shape} do not fit the '
                     f'{len(starts)} test windows of horizon {task.horizon}')
  targets = windows(task.values, starts, task.context, task.horizon)[1]
  error = predictions * task.scale + task.offset - targets
  naive = seasonal_naive(task.values, starts, task.horizon, task.season) - targets
  return {'mae_orig': float(np.mean(np.abs(error))),
          'rmse_orig': math.sqrt(np.mean(error ** 2)),
          'naive_mae': float(np.mean(np.abs(naive))),
          'naive_rmse': math.sqrt(np.mean(naive ** 2)),
          'windows': float(len(starts))}


def from_config(task_cfg, seed: int) -> Forecast:
  """``task.series`` or ``task.csv`` (+ ``task.column``; it wins over ``task.series``),
  ``task.context``,
  ``task.horizon``, ``task.test_fraction``, ``task.season``, ``task.valid_fraction``."""
  cfg = base.read_config(task_cfg, {'series': '', 'csv': '', 'column': '', 'context': None,
                                    'horizon': 1, 'test_fraction': 0.2, 'season': 1,
                                    'valid_fraction': arrays.VALID_FRACTION})
  if not (cfg['series'] or cfg['csv']):
    raise ValueError(f'set task.series (one of: {", ".join(SERIES)}) or task.csv (a CSV '
                     'file, with task.column)')
  if cfg['csv']:  # a file of one's own replaces the experiment's shipped series
    values = read_column(cfg['csv'], str(cfg['column']))
  else:
    path, column = shipped_csv(cfg['series'])
    values = read_column(path, cfg['column'] or column)
  return Forecast(seed=seed, values=values, context=cfg['context'], horizon=cfg['horizon'],
                  test_fraction=cfg['test_fraction'], season=cfg['season'],
                  valid_fraction=cfg['valid_fraction'])

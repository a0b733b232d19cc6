"""MNIST-1D (Greydanus & Kobak, "Scaling down deep learning with MNIST-1D", ICML 2024).

Ten 1-D digit templates, each padded, translated, scaled, sheared and noised into a
signal of 40 points; the class is the template. The ``mnist1d`` package's own
generator ``make_dataset(get_dataset_args())`` makes the published data set (5000
signals, seed 42, the first 4000 for training and the last 1000 for test), so
nothing is downloaded. Each signal is a sequence of 40 steps of one feature. The
validation ('eval') split is ``task.valid_fraction`` of the 4000 (default 0.1: 400,
40 of each class), cut by ``arrays.Splits.carve``; 'test' is the published 1000.

``shuffle_time=True`` is the paper's "shuffled" experiment: one fixed permutation of
the 40 time steps, the same for every signal, destroys the spatial prior. It is the
permutation the package draws with ``shuffle_seq=True`` (the next draw of its seeded
generator after the data), so the arrays equal the package's shuffled data set.

Published test accuracy (paper, table 1): logistic regression 32%, MLP 68%, CNN 94%,
GRU 91%; shuffled: CNN 56%, GRU 57% (the best step of the authors' run: their
benchmark notebook logs the shuffled GRU at 56.8% after 1000 steps, 53.3% after 6000).
"""
import dataclasses
import functools
import random

import numpy as np

from seqlab.tasks import arrays
from seqlab.tasks import base

LENGTH = 40
NUM_CLASSES = 10
LOGISTIC_REGRESSION_ACCURACY = 0.32  # the paper's linear baseline


@functools.lru_cache(maxsize=1)
def load() -> dict[str, np.ndarray]:
  """The published data set: 'x' [4000, 40], 'y' [4000], 'x_test' [1000, 40], 'y_test'
  [1000], and 'permutation' [40] (the shuffled experiment's), generated once a process.

  The generator seeds Python's and NumPy's global generators; their states are
  restored afterwards, so loading changes nothing else.
  """
  try:
    from mnist1d.data import get_dataset_args, make_dataset  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise FileNotFoundError("task 'mnist1d' generates its data with the 'mnist1d' package: "
                            "pip install 'seqlab[data]' (or mnist1d)") from e
  py_state, np_state = random.getstate(), np.random.get_state()
  try:
    data = make_dataset(get_dataset_args())
    # make_dataset(shuffle_seq=True) draws np.random.permutation(40) right here.
    permutation = np.random.permutation(LENGTH)
  finally:
    random.setstate(py_state)
    np.random.set_state(np_state)
  return {'x': data['x'], 'y': data['y'], 'x_test': data['x_test'], 'y_test': data['y_test'],
          'permutation': permutation}


def _examples(x: np.ndarray, y: np.ndarray, permutation: np.ndarray | None) -> arrays.Examples:
  """[n, 40] signals and [n] labels -> inputs float32 [n, 40, 1], targets int32 [n]."""
  if permutation is not None:
    x = x[:, permutation]
  return arrays.Examples(inputs=x.astype(np.float32)[:, :, None], targets=y.astype(np.int32))


@dataclasses.dataclass(frozen=True)
class MNIST1D:
  """MNIST-1D as sequences: inputs float32 [batch, 40, 1], targets int32 [batch]."""
  seed: int
  shuffle_time: bool = False
  valid_fraction: float = arrays.VALID_FRACTION

  def __post_init__(self):
    base.check_int('seed', self.seed, minimum=0)
    if not isinstance(self.shuffle_time, (bool, np.bool_)):
      raise ValueError(f'task.shuffle_time must be True or False, got {self.shuffle_time!r}')

  @functools.cached_property
  def permutation(self) -> np.ndarray | None:
    """The time permutation applied to every signal, or None."""
    return load()['permutation'] if self.shuffle_time else None

  @functools.cached_property
  def splits(self) -> arrays.Splits:
    """'train' and 'eval' from the published 4000 training signals, 'test' the 1000."""
    data = load()
    return arrays.Splits.carve(_examples(data['x'], data['y'], self.permutation),
                               _examples(data['x_test'], data['y_test'], self.permutation),
                               self.valid_fraction)

  @property
  def spec(self) -> base.Spec:
    return base.Spec(input_vocab=0, input_features=1, target='sequence',
                     num_outputs=NUM_CLASSES, loss='cross_entropy', metric='accuracy',
                     baseline=LOGISTIC_REGRESSION_ACCURACY,
                     fixed_length=LENGTH)

  def batch(self, split: str, step: int, batch_size: int) -> dict[str, np.ndarray]:
    """inputs [B, 40, 1], targets [B], example_weight [B]; see ``arrays``."""
    return self.splits.batch(self.seed, split, step, batch_size)

  def num_eval_batches(self, batch_size: int, split: str = 'eval') -> int:
    return self.splits.num_batches(batch_size, split)


def from_config(task_cfg, seed: int) -> MNIST1D:
  """``task.shuffle_time`` (default False), ``task.valid_fraction`` (default 0.1)."""
  return MNIST1D(seed=seed, **base.read_config(
      task_cfg, {'shuffle_time': False, 'valid_fraction': arrays.VALID_FRACTION}))

"""Batches of a fixed data set held in memory: shuffled epochs for training, and the
held-out splits ('eval', the validation split, and 'test') read once, in order, each
with its last batch padded by zero-weight examples.

A data set that ships train and test only gets its validation split from the training
examples (``Splits.carve``): ``task.valid_fraction`` of them (``VALID_FRACTION`` by
default), the same examples in every run, drawn class by class in proportion
(``validation_rows``). ``valid_fraction=0`` keeps the old two-split protocol, 'eval'
reading the test set, with a warning: selection (``best/``, sweep ranking) then sees it.

Train batch ``s`` holds positions ``[s B, (s + 1) B)`` of the endless stream made of
epoch 0, epoch 1, ...; epoch ``e`` is the permutation ``base.rng(seed, 'train', e)``
of the training examples. A batch is thus a pure function of (seed, step, B), and a
batch that straddles two epochs takes the end of one and the start of the next.

Eval batch ``s`` holds examples ``s B .. (s + 1) B - 1`` of the held-out split; the
positions past its end repeat examples from its start with ``example_weight`` 0, so
shapes stay fixed and the weighted count over ``num_batches`` batches is the split
size exactly (``losses.loss_and_metrics`` weights each sequence by ``example_weight``).
"""
import dataclasses

from absl import logging
import numpy as np

from seqlab.tasks import base

VALID_FRACTION = 0.1  # task.valid_fraction's default: the share of training examples held out
VALID_SEED = 20261207  # the validation rows' permutation: one fixed draw, whatever the run's seed


@dataclasses.dataclass(frozen=True, eq=False)
class Examples:
  """One split's examples, padded to a common length.

  inputs: int32 [n, time] tokens or float32 [n, time, features].
  targets: int32 [n] class ids or float32 [n, outputs].
  lengths: int32 [n] valid steps (padding after them), or None when all are full.
  """
  inputs: np.ndarray
  targets: np.ndarray
  lengths: np.ndarray | None = None

  def __post_init__(self):
    n = len(self.targets)
    if n == 0:
      raise ValueError('a split needs at least one example, got none')
    if len(self.inputs) != n or (self.lengths is not None and self.lengths.shape != (n,)):
      raise ValueError(f'inputs {self.inputs.shape}, targets {self.targets.shape} and lengths '
                       f'{None if self.lengths is None else self.lengths.shape} disagree on '
                       'the number of examples')

  def __len__(self) -> int:
    return len(self.targets)


def indices(seed: int, split: str, step: int, batch_size: int, size: int
            ) -> tuple[np.ndarray, np.ndarray]:
  """(example indices int64 [B], example weights float32 [B]) of batch ``step``; see above."""
  base.check_int('step', step, minimum=0)
  base.check_int('batch_size', batch_size)
  positions = np.arange(step * batch_size, (step + 1) * batch_size)
  if split in base.HELD_OUT:
    if step >= base.num_batches(size, batch_size):
      raise ValueError(f'{split} batch {step} is past the held-out split: {size} examples make '
                       f'{base.num_batches(size, batch_size)} batches of {batch_size}')
    return positions % size, (positions < size).astype(np.float32)
  epochs = positions // size
  out = np.empty(batch_size, np.int64)
  for epoch in np.unique(epochs):
    here = epochs == epoch
    out[here] = base.rng(seed, split, int(epoch)).permutation(size)[positions[here] % size]
  return out, np.ones(batch_size, np.float32)


def batch(examples: Examples, seed: int, split: str, step: int, batch_size: int
          ) -> dict[str, np.ndarray]:
  """Batch ``step`` of ``split``: 'inputs', 'targets', 'example_weight' [B] and, when the
  examples have them, 'lengths'."""
  rows, weights = indices(seed, split, step, batch_size, len(examples))
  out = {'inputs': examples.inputs[rows], 'targets': examples.targets[rows],
         'example_weight': weights}
  if examples.lengths is not None:
    out['lengths'] = examples.lengths[rows]
  return out


def pad_sequences(sequences: list[np.ndarray], length: int | None = None
                  ) -> tuple[np.ndarray, np.ndarray]:
  """Variable-length ``[len_i, ...]`` arrays -> (zero-padded [n, T, ...], lengths int32 [n]).

  ``T`` is ``length`` or, when None, the longest sequence; longer ones are cut to ``T``.
  """
  lengths = np.array([len(s) for s in sequences], np.int32)
  t = int(lengths.max()) if length is None else length
  lengths = np.minimum(lengths, t)
  first = np.asarray(sequences[0])
  out = np.zeros((len(sequences), t) + first.shape[1:], first.dtype)
  for i, (s, n) in enumerate(zip(sequences, lengths)):
    out[i, :n] = s[:n]
  return out, lengths


def sort_labels(labels) -> list[str]:
  """The distinct labels in numeric order when all are numbers, else in string order;
  class i is the i-th."""
  labels = sorted(set(labels))
  try:
    return sorted(labels, key=float)
  except ValueError:
    return labels


def check_fraction(key: str, value, low_open: bool = True) -> float:
  """``value`` as a float in (0, 1) (``low_open=False``: [0, 1)); else ValueError naming ``key``."""
  if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
      (0.0 < value if low_open else 0.0 <= value) and value < 1.0):
    raise ValueError(f'{key} must be in {"(" if low_open else "["}0, 1), got {value!r}')
  return float(value)


def warn_eval_is_test() -> None:
  """The warning of a task without a validation split (``task.valid_fraction=0``)."""
  logging.warning('task.valid_fraction=0: the eval split is the test set, so best/, '
                  'train.best_metric and sweep rankings select on it; set '
                  'task.valid_fraction > 0 (default %g) for a validation split', VALID_FRACTION)


def validation_rows(labels: np.ndarray, fraction: float) -> tuple[np.ndarray, np.ndarray]:
  """(train rows, validation rows), each int64 sorted, of ``n = len(labels)`` examples.

  ``k = max(1, round(fraction n))`` rows are held out, stratified: the examples of each
  class c (``n_c`` of them) are put in the fixed random order ``VALID_SEED``, the r-th
  gets the key (r + 1/2) / n_c, and the k smallest keys are held out, so every class
  gives ``k n_c / n`` rows up to rounding (one class per distinct label; regression
  targets: pass ``np.zeros(n)``, one class). Deterministic: a function of the labels.
  """
  n = len(labels)
  k = max(1, round(fraction * n))
  if k >= n:
    raise ValueError(f'task.valid_fraction={fraction} of {n} training examples leaves no '
                     'training example; lower task.valid_fraction or use more examples')
  order = np.random.default_rng(VALID_SEED).permutation(n)
  _, classes = np.unique(np.asarray(labels)[order], return_inverse=True, axis=0)
  classes = classes.reshape(-1)
  counts = np.bincount(classes)
  rank = np.zeros(n, np.int64)
  for c in range(len(counts)):
    rank[classes == c] = np.arange(counts[c])
  held = order[np.argsort((rank + 0.5) / counts[classes], kind='stable')[:k]]
  return np.setdiff1d(np.arange(n), held), np.sort(held)


def take(examples: Examples, rows: np.ndarray) -> Examples:
  """The examples at ``rows``."""
  return Examples(inputs=examples.inputs[rows], targets=examples.targets[rows],
                  lengths=None if examples.lengths is None else examples.lengths[rows])


@dataclasses.dataclass(frozen=True, eq=False)
class Splits:
  """A data set's three splits: 'train' trains, 'eval' (validation) selects, 'test' reports."""
  train: Examples
  eval: Examples
  test: Examples

  @classmethod
  def carve(cls, train: Examples, test: Examples, fraction: float,
            stratify: bool = True) -> 'Splits':
    """The validation split cut from ``train`` by ``validation_rows`` (by class when
    ``stratify``); ``fraction`` 0: 'eval' is ``test``, with a warning."""
    if not check_fraction('task.valid_fraction', fraction, low_open=False):
      warn_eval_is_test()
      return cls(train, test, test)
    labels = train.targets if stratify else np.zeros(len(train))
    rows, held = validation_rows(labels, fraction)
    return cls(take(train, rows), take(train, held), test)

  def of(self, split: str) -> Examples:
    if split not in base.SPLITS:
      raise ValueError(f'split={split!r} is not valid; choose one of: {", ".join(base.SPLITS)}')
    return getattr(self, split)

  def batch(self, seed: int, split: str, step: int, batch_size: int) -> dict[str, np.ndarray]:
    """Batch ``step`` of ``split`` (``batch`` above)."""
    return batch(self.of(split), seed, split, step, batch_size)

  def num_batches(self, batch_size: int, split: str) -> int:
    """Batches that cover the held-out ``split`` ('eval' or 'test')."""
    base.check_held_out(split)
    return base.num_batches(len(self.of(split)), batch_size)

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

Under length buckets (``train.length_buckets = N``, ``Bucketed``) train batches come
from examples of similar length, each padded only to its bucket's bound; see
``bucket_indices``. Held-out batches do not change.
"""
import dataclasses
from typing import Any

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


# The generator of the bucket order of epoch e is default_rng([SCHEDULE_SEED, e]): no seed
# (at most 2**31 - 1, config.MAX_SEED) shares it, and it does not depend on the seed.
SCHEDULE_SEED = 2**31


def bucket_bounds(lengths: np.ndarray, n: int, batch_size: int) -> np.ndarray:
  """The at most ``n`` padded lengths of the buckets, int32 ascending, that make an epoch
  scan the fewest steps: sum over buckets b of ceil(n_b / B) B bound_b, where bucket b
  holds the n_b examples of ``lengths`` [examples] in (bound_{b-1}, bound_b] and its
  last batch is filled up to B. Each bound is some example's length (no bucket is
  empty), the last the longest; fewer than ``n`` where more would not scan less.

  A dynamic programme over the U distinct lengths, O(n U^2): ``best[j]``, the fewest
  steps that cover the j shortest distinct lengths with the buckets so far.
  """
  base.check_int('train.length_buckets', n)
  values, counts = np.unique(lengths, return_counts=True)
  below = np.concatenate([[0], np.cumsum(counts)])  # examples shorter than values[j]
  best = np.concatenate([[0.0], np.full(len(values), np.inf)])
  cuts = []  # per bucket added: cut[j] = where the last bucket covering j starts (j: none)
  for _ in range(n):
    new, cut = best.copy(), np.arange(len(values) + 1)
    for j in range(1, len(values) + 1):
      starts = np.arange(j)
      batches = -(-(below[j] - below[starts]) // batch_size)
      cost = best[starts] + batches * batch_size * values[j - 1]
      i = int(np.argmin(cost))
      if cost[i] < new[j]:
        new[j], cut[j] = cost[i], i
    cuts.append(cut)
    best = new
  bounds, j = [], len(values)
  for cut in reversed(cuts):
    if cut[j] != j:
      bounds.append(values[j - 1])
      j = cut[j]
  return np.array(bounds[::-1], np.int32)


def bucket_batches(lengths: np.ndarray, bounds: np.ndarray, batch_size: int) -> np.ndarray:
  """(bucket of each example int64 [examples], batches of each bucket per epoch
  int64 [buckets]): example i is in the first bucket whose bound is >= its length, and a
  bucket of n_b examples makes ceil(n_b / B) batches."""
  bucket = np.searchsorted(bounds, lengths)
  return bucket, -(-np.bincount(bucket, minlength=len(bounds)) // batch_size)


def bucket_indices(seed: int, step: int, batch_size: int, lengths: np.ndarray,
                   bounds: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
  """(example indices int64 [B], example weights float32 [B], padded length) of train
  batch ``step`` under length buckets.

  An epoch is C = sum_b ceil(n_b / B) batches (``bucket_batches``); batch ``step`` is
  batch ``step mod C`` of epoch ``e = step // C``. Epoch e lists each bucket's examples
  in the order of the permutation ``base.rng(seed, 'train', e)`` and cuts the list into
  batches of B; a bucket's last batch is filled up with its first examples at weight 0,
  so every example counts once per epoch. The C batches run in the order of a
  permutation drawn from ``default_rng([SCHEDULE_SEED, e])``: shuffled, so no length
  comes last, and independent of the seed, so the padded length of every step is the
  same for every point of a population (seeds differ, shapes must not).
  """
  base.check_int('step', step, minimum=0)
  base.check_int('batch_size', batch_size)
  bucket, chunks = bucket_batches(lengths, bounds, batch_size)
  epoch, slot = divmod(step, int(chunks.sum()))
  which = np.random.default_rng([SCHEDULE_SEED, epoch]).permutation(int(chunks.sum()))[slot]
  b = int(np.searchsorted(np.cumsum(chunks), which, side='right'))
  first = (which - int(np.sum(chunks[:b]))) * batch_size  # this batch's place in bucket b
  order = base.rng(seed, 'train', epoch).permutation(len(lengths))
  members = order[bucket[order] == b]
  positions = np.arange(first, first + batch_size)
  return members[positions % len(members)], (positions < len(members)).astype(np.float32), int(
      bounds[b])


@dataclasses.dataclass(frozen=True, eq=False)
class Bucketed:
  """A fixed data set's task (``padded``) whose train batches come from length buckets.

  Train batch ``s`` is ``bucket_indices``' batch: inputs [B, bound, ...] (and per-step
  targets [B, bound, ...]) with bound the bucket's (``bounds(B)``), so a train step
  compiles once per bound (at most ``n`` times). ``padded.splits`` are ``Splits``;
  held-out batches, the spec and every other attribute are ``padded``'s.
  """
  padded: Any  # its ``splits.train`` carry lengths; its ``seed`` orders the examples
  n: int  # train.length_buckets
  _bounds: dict = dataclasses.field(default_factory=dict)  # batch size -> bounds

  def bounds(self, batch_size: int) -> np.ndarray:
    """int32 [buckets]: ``bucket_bounds`` of the training lengths for batches of B."""
    if batch_size not in self._bounds:
      self._bounds[batch_size] = bucket_bounds(self.padded.splits.train.lengths, self.n,
                                               batch_size)
    return self._bounds[batch_size]

  @property
  def spec(self):
    return self.padded.spec

  def __getattr__(self, name):
    if name in ('padded', '_bounds'):  # not set yet (copy, pickle): no recursion
      raise AttributeError(name)
    return getattr(self.padded, name)

  def batch(self, split: str, step: int, batch_size: int) -> dict[str, np.ndarray]:
    if split != 'train':
      return self.padded.batch(split, step, batch_size)
    train = self.padded.splits.train
    rows, weights, bound = bucket_indices(self.padded.seed, step, batch_size, train.lengths,
                                          self.bounds(batch_size))
    return self._cut({'inputs': train.inputs[rows], 'targets': train.targets[rows],
                      'example_weight': weights, 'lengths': train.lengths[rows]}, bound)

  def num_eval_batches(self, *args) -> int:
    return self.padded.num_eval_batches(*args)

  def longest_batch(self, batch_size: int) -> dict[str, np.ndarray]:
    """A train batch of the longest bucket's shape: ``padded``'s batch 0 cut to the top
    bound (no training example is longer)."""
    return self._cut(self.padded.batch('train', 0, batch_size), self.bounds(batch_size)[-1])

  def _cut(self, batch: dict, bound: int) -> dict[str, np.ndarray]:
    """``batch`` with its time axis cut to ``bound``: the inputs, and the targets where
    there is one per step."""
    out = dict(batch, inputs=batch['inputs'][:, :bound])
    if self.padded.spec.target == 'steps':
      out['targets'] = batch['targets'][:, :bound]
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

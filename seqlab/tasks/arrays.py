"""Batches of a fixed data set held in memory: shuffled epochs for training, and an
eval split read once, in order, with its last batch padded by zero-weight examples.

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

import numpy as np

from seqlab.tasks import base


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

"""The adding problem (Le, Jaitly & Hinton 2015; Arjovsky, Shah & Bengio 2016, 4.2).

Each input step has two channels: a value uniform in [0, 1) and a marker. The marker
is 1 at exactly two steps and 0 elsewhere; the target is the sum of the two marked
values. Following Arjovsky et al. (the variant most later papers use), the first
marker is uniform over the first half, steps ``[0, T // 2)``, and the second uniform
over the second half, ``[T // 2, T)``; Le et al. place both anywhere in the sequence.

Predicting 1 always (the mean of the sum) scores the variance of the sum of two
U(0, 1) values, 2 / 12 = 0.167: the published baseline a model must beat.
"""
import dataclasses

import numpy as np

from seqlab.tasks import base

BASELINE_MSE = 0.167  # 2 / 12 rounded, as published


@dataclasses.dataclass(frozen=True)
class Adding:
  """The adding problem of length ``length`` (T >= 2) with ``eval_size`` held-out examples."""
  seed: int
  length: int
  eval_size: int = 1000

  def __post_init__(self):
    base.check_int('seed', self.seed, minimum=0)
    base.check_int('task.length', self.length, minimum=2)
    base.check_int('task.eval_size', self.eval_size)

  @property
  def spec(self) -> base.Spec:
    return base.Spec(input_vocab=0, input_features=2, target='sequence', num_outputs=1,
                     loss='mse', metric='mse', baseline=BASELINE_MSE,
                     fixed_length=self.length)

  def batch(self, split: str, step: int, batch_size: int) -> dict[str, np.ndarray]:
    """inputs float32 [batch, T, 2] (value, marker); targets float32 [batch, 1]."""
    return make_batch(base.rng(self.seed, split, step), base.check_int('batch_size', batch_size),
                      self.length)

  def num_eval_batches(self, batch_size: int, split: str = 'eval') -> int:
    """'eval' and 'test' are ``eval_size`` examples each, from their own generator streams."""
    base.check_held_out(split)
    return base.num_batches(self.eval_size, batch_size)


def make_batch(rng: np.random.Generator, batch_size: int, length: int) -> dict[str, np.ndarray]:
  """One batch drawn from ``rng``: inputs [batch, T, 2], targets [batch, 1] (float32)."""
  values = rng.random((batch_size, length), dtype=np.float32)
  half = length // 2
  first = rng.integers(0, half, size=batch_size)
  second = rng.integers(half, length, size=batch_size)
  rows = np.arange(batch_size)
  marker = np.zeros((batch_size, length), np.float32)
  marker[rows, first] = 1.0
  marker[rows, second] = 1.0
  targets = values[rows, first] + values[rows, second]
  return {'inputs': np.stack([values, marker], axis=-1), 'targets': targets[:, None]}


def from_config(task_cfg, seed: int) -> Adding:
  """``task.length`` (T), ``task.eval_size`` (default 1000)."""
  return Adding(seed=seed, **base.read_config(task_cfg, {'length': None, 'eval_size': 1000}))

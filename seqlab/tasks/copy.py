"""The copy memory task (Arjovsky, Shah & Bengio 2016, section 4.1).

Alphabet {0, ..., 9}: 0 is the blank, 1..8 the data symbols, 9 the delimiter. With
``length`` T, each sequence has T + 20 steps:

  step      0 .. 9       10 .. T+8     T+9         T+10 .. T+19
  input     x_1 .. x_10  0 (T-1 times) 9           0 (10 times)
  target    0 ...................................  x_1 .. x_10

where the x_i are drawn uniformly, independently, with replacement from 1..8. The
loss is the cross-entropy averaged over all T + 20 steps (classes 0..8: the
delimiter is never a target). The memoryless strategy (blank for T + 10 steps, then
uniform over 1..8) scores 10 log(8) / (T + 20), the baseline to beat: 0.173 at T=100.
"""
import dataclasses
import math

import numpy as np

from seqlab.tasks import base

NUM_DATA = 10  # symbols to remember
BLANK, DELIMITER = 0, 9
NUM_SYMBOLS = 8  # data symbols 1..8


def baseline_cross_entropy(length: int) -> float:
  """The memoryless cross-entropy 10 log(8) / (T + 20), in nats."""
  return NUM_DATA * math.log(NUM_SYMBOLS) / (length + 2 * NUM_DATA)


@dataclasses.dataclass(frozen=True)
class Copy:
  """The copy task with delay ``length`` (T >= 1) and ``eval_size`` held-out examples."""
  seed: int
  length: int = 100
  eval_size: int = 1000

  def __post_init__(self):
    base.check_int('seed', self.seed, minimum=0)
    base.check_int('task.length', self.length)
    base.check_int('task.eval_size', self.eval_size)

  @property
  def spec(self) -> base.Spec:
    return base.Spec(input_vocab=DELIMITER + 1, input_features=0, target='steps',
                     num_outputs=NUM_SYMBOLS + 1, loss='cross_entropy', metric='cross_entropy',
                     baseline=baseline_cross_entropy(self.length),
                     fixed_length=self.length + 2 * NUM_DATA)

  def batch(self, split: str, step: int, batch_size: int) -> dict[str, np.ndarray]:
    """inputs, targets: int32 [batch, T + 20]."""
    return make_batch(base.rng(self.seed, split, step), base.check_int('batch_size', batch_size),
                      self.length)

  def num_eval_batches(self, batch_size: int, split: str = 'eval') -> int:
    """'eval' and 'test' are ``eval_size`` examples each, from their own generator streams."""
    base.check_held_out(split)
    return base.num_batches(self.eval_size, batch_size)


def make_batch(rng: np.random.Generator, batch_size: int, length: int) -> dict[str, np.ndarray]:
  """One batch drawn from ``rng``: inputs and targets int32 [batch, T + 20]."""
  data = rng.integers(1, NUM_SYMBOLS + 1, size=(batch_size, NUM_DATA), dtype=np.int32)
  inputs = np.full((batch_size, length + 2 * NUM_DATA), BLANK, np.int32)
  inputs[:, :NUM_DATA] = data
  inputs[:, length + NUM_DATA - 1] = DELIMITER
  targets = np.full_like(inputs, BLANK)
  targets[:, -NUM_DATA:] = data
  return {'inputs': inputs, 'targets': targets}


def from_config(task_cfg, seed: int) -> Copy:
  """``task.length`` (T, default 100 as in the paper), ``task.eval_size`` (default 1000)."""
  return Copy(seed=seed, **base.read_config(task_cfg, {'length': 100, 'eval_size': 1000}))

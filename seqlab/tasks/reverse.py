"""Reversing token sequences, a sequence-to-sequence problem of variable length.

Each source is n symbols drawn uniformly, independently, with replacement from a
vocabulary of ``vocab`` (default 20), n uniform in [min_length, max_length] (default
5..20); the target is the same symbols in reverse order, then EOS. Symbol k is token
k + 3 in both vocabularies (0, 1, 2 are PAD, BOS, EOS; see ``seqlab.tokens``).
The first target token depends on the last source token, so without attention the
whole source must pass through the encoder's final state; with attention each output
step reads one source step.

Batches are padded to max_length source and max_length + 1 target steps. In text
(``encode_text``/``decode_text``) symbol k is the letter chr(ord('a') + k).
"""
import dataclasses
import string

import numpy as np

from seqlab import tokens
from seqlab.tasks import base


@dataclasses.dataclass(frozen=True)
class Reverse:
  """Sequence reversal over ``vocab`` symbols; ``eval_size`` held-out examples."""
  seed: int
  vocab: int = 20
  min_length: int = 5
  max_length: int = 20
  eval_size: int = 1000

  def __post_init__(self):
    base.check_int('seed', self.seed, minimum=0)
    base.check_int('task.vocab', self.vocab, minimum=2)
    if self.vocab > len(string.ascii_lowercase):
      raise ValueError(f'task.vocab must be at most 26 (one letter each), got {self.vocab}')
    base.check_int('task.min_length', self.min_length)
    base.check_int('task.max_length', self.max_length, minimum=self.min_length)
    base.check_int('task.eval_size', self.eval_size)

  @property
  def spec(self) -> base.Spec:
    vocab = self.vocab + tokens.NUM_SPECIAL
    return base.Spec(input_vocab=vocab, input_features=0, target='steps', num_outputs=vocab,
                     loss='cross_entropy', metric='accuracy', model='seq2seq')

  def batch(self, split: str, step: int, batch_size: int) -> dict[str, np.ndarray]:
    """``seqlab.tokens.pack`` layout: inputs [batch, max_length], targets [batch,
    max_length + 1]."""
    rng = base.rng(self.seed, split, step)
    batch_size = base.check_int('batch_size', batch_size)
    lengths = rng.integers(self.min_length, self.max_length + 1, size=batch_size)
    sources = [rng.integers(0, self.vocab, size=n) + tokens.NUM_SPECIAL for n in lengths]
    return tokens.pack(sources, [s[::-1] for s in sources], self.max_length, self.max_length + 1)

  def num_eval_batches(self, batch_size: int, split: str = 'eval') -> int:
    """'eval' and 'test' are ``eval_size`` examples each, from their own generator streams."""
    base.check_held_out(split)
    return base.num_batches(self.eval_size, batch_size)

  def encode_text(self, text: str) -> np.ndarray:
    """'abc' -> int32 source tokens [3, 4, 5]; other characters raise ValueError."""
    letters = string.ascii_lowercase[:self.vocab]
    bad = sorted(set(text) - set(letters))
    if bad or not text:
      raise ValueError(f'reverse reads 1 or more of the letters {letters!r}, got {text!r}')
    return np.array([letters.index(c) + tokens.NUM_SPECIAL for c in text], np.int32)

  def decode_text(self, row) -> str:
    """Target tokens (a decoded row) -> letters, up to the first EOS."""
    return ''.join(string.ascii_lowercase[t - tokens.NUM_SPECIAL] for t in tokens.trim(row))


def from_config(task_cfg, seed: int) -> Reverse:
  """``task.vocab`` (20), ``task.min_length`` (5), ``task.max_length`` (20), ``task.eval_size``
  (1000)."""
  return Reverse(seed=seed, **base.read_config(
      task_cfg, {'vocab': 20, 'min_length': 5, 'max_length': 20, 'eval_size': 1000}))

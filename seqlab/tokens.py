"""Sequence to sequence: the token convention and the batch layout. A leaf: imports
nothing from seqlab, so tasks, models and metrics all read it.

Every seq2seq task numbers its target vocabulary with three special tokens first,

  PAD = 0   padding (also of the source)
  BOS = 1   the decoder's first input
  EOS = 2   the last target of every sequence

and its batches (``pack``) hold

  inputs          int32 [batch, src_time]  source tokens, PAD after ``lengths``
  lengths         int32 [batch]            valid source steps
  decoder_inputs  int32 [batch, tgt_time]  BOS y_1 .. y_n, then PAD
  targets         int32 [batch, tgt_time]  y_1 .. y_n EOS, then PAD
  target_mask     float32 [batch, tgt_time] 1 on the n + 1 real targets
"""
import numpy as np

PAD, BOS, EOS = 0, 1, 2
NUM_SPECIAL = 3  # real tokens are numbered from here


def pack(sources, targets, src_time: int, tgt_time: int) -> dict[str, np.ndarray]:
  """Token sequences -> a padded batch (see the module docstring for the keys).

  Args:
    sources: ``batch`` int sequences of length 1 .. src_time (no specials).
    targets: ``batch`` int sequences of length 0 .. tgt_time - 1 (no specials).
  """
  batch = len(sources)
  out = {'inputs': np.full((batch, src_time), PAD, np.int32),
         'lengths': np.zeros((batch,), np.int32),
         'decoder_inputs': np.full((batch, tgt_time), PAD, np.int32),
         'targets': np.full((batch, tgt_time), PAD, np.int32),
         'target_mask': np.zeros((batch, tgt_time), np.float32)}
  for i, (src, tgt) in enumerate(zip(sources, targets, strict=True)):
    n, m = len(src), len(tgt)
    if not 1 <= n <= src_time or m >= tgt_time:
      raise ValueError(f'example {i}: source length {n} must be in [1, {src_time}] and target '
                       f'length {m} below {tgt_time} (room for EOS)')
    out['inputs'][i, :n] = src
    out['lengths'][i] = n
    out['decoder_inputs'][i, :m + 1] = [BOS, *tgt]
    out['targets'][i, :m + 1] = [*tgt, EOS]
    out['target_mask'][i, :m + 1] = 1.0
  return out


def trim(tokens) -> list[int]:
  """A decoded or target row -> its tokens before the first EOS (PAD dropped)."""
  out = []
  for t in np.asarray(tokens).tolist():
    if t == EOS:
      break
    if t != PAD:
      out.append(t)
  return out

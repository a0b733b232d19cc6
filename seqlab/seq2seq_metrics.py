"""Sequence to sequence: the token convention, the batch layout, and sequence-level metrics.

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

The metrics compare decoded sequences (cut at their first EOS) with one or more
references per example (G2P words have several pronunciations; the closest counts):

  exact_match          fraction of examples equal to a reference
  sequence_error_rate  1 - exact_match  (the word error rate, WER, of G2P)
  token_error_rate     sum of edit distances / sum of reference lengths
                       (Levenshtein: substitutions, insertions, deletions; the
                       phoneme error rate, PER, of G2P)
  token_accuracy       position-wise matches / sum of max(hypothesis, reference) length
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


def edit_distance(hyp, ref) -> int:
  """Levenshtein distance (unit-cost substitution, insertion, deletion).

  The dynamic programme d[i, j] = min(d[i-1, j] + 1, d[i, j-1] + 1,
  d[i-1, j-1] + [hyp_i != ref_j]) one row at a time; the within-row term
  d[i, j-1] + 1 is a running minimum: d[i, j] - j = min_{k <= j} (base_k - k).
  """
  hyp, ref = np.asarray(hyp), np.asarray(ref)
  row = np.arange(len(ref) + 1)
  cols = np.arange(len(ref) + 1)
  for h in hyp:
    base = np.empty_like(row)
    base[0] = row[0] + 1
    base[1:] = np.minimum(row[1:] + 1, row[:-1] + (ref != h))
    row = np.minimum.accumulate(base - cols) + cols
  return int(row[-1])


def sequence_metrics(hyps, refs) -> dict[str, float]:
  """Sums over examples (divide with ``summarize``) of the module's metrics.

  Args:
    hyps: one token sequence per example (already ``trim``med).
    refs: per example, a list of one or more reference sequences.
  Returns:
    {'count', 'exact', 'edits', 'ref_tokens', 'matches', 'aligned'}: examples,
    exact matches, edit distance to the closest reference, that reference's
    length, position-wise matches with it, and max(len(hyp), len(ref)).
  """
  sums = dict.fromkeys(('count', 'exact', 'edits', 'ref_tokens', 'matches', 'aligned'), 0)
  for hyp, choices in zip(hyps, refs, strict=True):
    dists = [edit_distance(hyp, r) for r in choices]
    ref = choices[int(np.argmin(dists))]
    n = min(len(hyp), len(ref))
    sums['count'] += 1
    sums['exact'] += int(min(dists) == 0)
    sums['edits'] += min(dists)
    sums['ref_tokens'] += len(ref)
    sums['matches'] += int(np.sum(np.asarray(hyp[:n]) == np.asarray(ref[:n])))
    sums['aligned'] += max(len(hyp), len(ref))
  return sums


def summarize(sums: dict) -> dict[str, float]:
  """Sums from ``sequence_metrics`` (added over batches) -> the rates."""
  exact = sums['exact'] / max(sums['count'], 1)
  return {'exact_match': exact, 'sequence_error_rate': 1.0 - exact,
          'token_error_rate': sums['edits'] / max(sums['ref_tokens'], 1),
          'token_accuracy': sums['matches'] / max(sums['aligned'], 1),
          'count': float(sums['count'])}


def seq2seq_eval(model, params, task, batch_size: int, method: str = 'greedy',
                 beam_width: int = 4, length_penalty: float = 0.0) -> dict[str, float]:
  """Decodes the task's whole 'eval' split and scores it against its references.

  Decoding runs to the targets' padded length (``tgt_time``), one compile for the
  whole split. Rows whose ``example_weight`` is 0 (padding of the last batch) are
  skipped. A task with several references per example provides
  ``references(split, step, batch_size)``; otherwise the batch's targets are used.
  Returns ``summarize``'s metrics; for G2P token_error_rate is the PER and
  sequence_error_rate the WER.
  """
  from seqlab.models import decode as decode_lib  # pylint: disable=g-import-not-at-top
  total = None
  for i in range(task.num_eval_batches(batch_size)):
    batch = task.batch('eval', i, batch_size)
    tokens, _ = decode_lib.decode(model, params, batch['inputs'], batch['lengths'], method=method,
                                  beam_width=beam_width, length_penalty=length_penalty,
                                  max_length=batch['targets'].shape[1])
    if hasattr(task, 'references'):
      refs = task.references('eval', i, batch_size)
    else:
      refs = [[trim(row)] for row in batch['targets']]
    keep = np.asarray(batch.get('example_weight', np.ones(len(refs)))) > 0
    hyps = [trim(row) for row, k in zip(np.asarray(tokens), keep) if k]
    sums = sequence_metrics(hyps, [r for r, k in zip(refs, keep) if k])
    total = sums if total is None else {k: total[k] + v for k, v in sums.items()}
  return summarize(total)

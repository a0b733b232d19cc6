"""Sequence-level metrics of decoded sequences, in NumPy (no model, no JAX).

The metrics compare decoded token rows (cut at their first EOS, ``tokens.trim``) with
one or more references per example (G2P words have several pronunciations; the
closest counts):

  exact_match          fraction of examples equal to a reference
  sequence_error_rate  1 - exact_match  (the word error rate, WER, of G2P)
  token_error_rate     sum of edit distances / sum of reference lengths
                       (Levenshtein: substitutions, insertions, deletions; the
                       phoneme error rate, PER, of G2P)
  token_accuracy       position-wise matches / sum of max(hypothesis, reference) length

A run logs them as ``decode_<name>`` (``logged``); decoding a split is
``seqlab.models.decode.decode_split``.
"""
import numpy as np

from seqlab import tokens

# Which way each rate is better.
RATES = {'exact_match': 'max', 'sequence_error_rate': 'min', 'token_error_rate': 'min',
         'token_accuracy': 'max'}
PREFIX = 'decode_'  # a rate's name in metrics.jsonl and eval_*.json is PREFIX + its name
METRIC_MODES = {PREFIX + name: mode for name, mode in RATES.items()}


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
  """Sums from ``sequence_metrics`` -> the rates, and the example count."""
  exact = sums['exact'] / max(sums['count'], 1)
  return {'exact_match': exact, 'sequence_error_rate': 1.0 - exact,
          'token_error_rate': sums['edits'] / max(sums['ref_tokens'], 1),
          'token_accuracy': sums['matches'] / max(sums['aligned'], 1),
          'count': float(sums['count'])}


def score(rows, refs) -> dict[str, float]:
  """Decoded rows against their references -> ``summarize``'s rates.

  Args:
    rows: one decoded token row per example (int [max_length] each: the sequence,
      EOS, then PAD, as ``seqlab.models.decode.decode`` returns them).
    refs: per example, a list of one or more reference token sequences (no EOS).
  """
  return summarize(sequence_metrics([tokens.trim(r) for r in rows], refs))


def logged(rates: dict) -> dict[str, float]:
  """``summarize``'s rates -> the ``decode_*`` metrics a run logs ('count' dropped)."""
  return {PREFIX + name: rates[name] for name in RATES}

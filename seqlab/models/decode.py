"""Greedy and beam-search decoding for ``Seq2Seq`` models, batched and jitted.

The source is encoded once; each new token is one ``Seq2Seq.step`` from the carried
decoder state, inside one ``jax.lax.while_loop`` that stops at ``max_length`` or when
no sequence can change any more. One compile per (model, method, beam width, batch
shape, max_length); the length penalty is traced, so changing it does not recompile.

Scores are log-probabilities under the model, log p(y) = sum_t log softmax(logits_t)[y_t]
over the emitted tokens (EOS included), divided by the length penalty of Wu et al. 2016
(GNMT), lp(y) = ((5 + |y|) / 6) ** alpha with |y| the tokens emitted, EOS included;
alpha = 0 is no penalty. PAD and BOS are never emitted (their logits are masked).

Beam search keeps, per example, ``beam_width`` alive hypotheses (ranked by log p) and
``beam_width`` finished ones (ranked by their penalised score), as in Wu et al. 2016
and T5X: each step extends every alive hypothesis by every token and takes the best
2 * beam_width candidates; those among the best beam_width that end in EOS join the
finished set, and the best beam_width of the others stay alive (so a width of 1 is
greedy search when alpha = 0). It stops early once no alive hypothesis can beat the worst
finished one (for alpha >= 0 an alive score can only reach log p / lp(max_length)). The
result is the best finished hypothesis, or the best alive one if none finished.

``decode_split`` decodes a task's whole held-out split; ``seqlab.seq2seq_metrics.score``
scores what it returns.
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np

from seqlab.tokens import BOS, EOS, PAD, trim

METHODS = ('greedy', 'beam')


def gnmt_penalty(length, alpha):
  """Wu et al. 2016: lp = ((5 + length) / 6) ** alpha (float32)."""
  return ((5.0 + jnp.asarray(length, jnp.float32)) / 6.0) ** alpha


def log_probs(logits):
  """[..., V] logits -> log-probabilities with PAD and BOS at -inf (never emitted)."""
  logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  return logp.at[..., PAD].set(-jnp.inf).at[..., BOS].set(-jnp.inf)


def decode(model, params, inputs, lengths, *, method='greedy', beam_width=4,
           length_penalty=0.0, max_length):
  """Decodes a batch of source sequences.

  Args:
    model: a ``Seq2Seq``; params: its variables (what ``model.init`` returned).
    inputs: int source tokens [batch, src_time]; lengths: [batch] valid steps.
    method: 'greedy' or 'beam'.
    beam_width: hypotheses kept by beam search (ignored by greedy).
    length_penalty: alpha >= 0 of ((5 + |y|) / 6) ** alpha.
    max_length: tokens to decode at most (EOS included).
  Returns:
    ``(tokens [batch, max_length] int32, scores [batch] float32)``: each row is the
    sequence, its EOS, then PAD; scores as in the module docstring.
  """
  if method not in METHODS:
    raise ValueError(f'method={method!r} is not valid; choose one of: {", ".join(METHODS)}')
  if not isinstance(max_length, int) or max_length < 1:
    raise ValueError(f'max_length must be a positive integer, got {max_length!r}')
  if method == 'beam' and (not isinstance(beam_width, int) or beam_width < 1):
    raise ValueError(f'beam_width must be a positive integer, got {beam_width!r}')
  if length_penalty < 0:
    raise ValueError(f'length_penalty must be >= 0, got {length_penalty!r}')
  return _decode(model, params, jnp.asarray(inputs), jnp.asarray(lengths),
                 jnp.float32(length_penalty), method=method,
                 beam_width=beam_width if method == 'beam' else 1, max_length=max_length)


def decode_split(model, params, task, batch_size: int, split: str = 'eval', **options):
  """Decodes every batch of the task's held-out ``split`` ('eval' or 'test').

  Decoding runs to the targets' padded length (``tgt_time``), one compile for the
  whole split. Rows whose ``example_weight`` is 0 (padding of the last batch) are
  dropped. A task with several references per example provides
  ``references(split, step, batch_size)``; otherwise the batch's targets are used.

  Args:
    model, params: as ``decode``; task: a seq2seq task (batches as in ``seqlab.tokens``).
    options: ``decode``'s method, beam_width and length_penalty.
  Returns:
    ``(rows, refs)``: per example its decoded row (int32 [tgt_time], as ``decode``
    returns them) and a list of one or more reference token sequences (no EOS).
  """
  rows, refs = [], []
  for i in range(task.num_eval_batches(batch_size, split)):
    batch = task.batch(split, i, batch_size)
    tokens, _ = decode(model, params, batch['inputs'], batch['lengths'],
                       max_length=batch['targets'].shape[1], **options)
    if hasattr(task, 'references'):
      choices = task.references(split, i, batch_size)
    else:
      choices = [[trim(row)] for row in batch['targets']]
    keep = np.asarray(batch.get('example_weight', np.ones(len(choices)))) > 0
    rows += [row for row, k in zip(np.asarray(tokens), keep) if k]
    refs += [c for c, k in zip(choices, keep) if k]
  return rows, refs


@functools.partial(jax.jit, static_argnames=('model', 'method', 'beam_width', 'max_length'))
def _decode(model, params, inputs, lengths, alpha, *, method, beam_width, max_length):
  state, memory = model.apply(params, inputs, lengths, method='encode')
  step = functools.partial(model.apply, params, method='step')
  if method == 'greedy':
    return greedy(step, state, memory, inputs.shape[0], max_length, alpha)
  return beam_search(step, state, memory, inputs.shape[0], beam_width, max_length, alpha)


def greedy(step, state, memory, batch: int, max_length: int, alpha):
  """The most likely next token, each step. ``step(state, tokens, memory)`` as ``Seq2Seq.step``."""

  def body(loop):
    t, state, last, tokens, logp, length, done = loop
    state, logits, _ = step(state, last, memory)
    lp = log_probs(logits)
    token = jnp.where(done, PAD, jnp.argmax(lp, axis=-1))
    logp = logp + jnp.where(done, 0.0, jnp.take_along_axis(lp, token[:, None], axis=-1)[:, 0])
    length = length + (~done).astype(jnp.int32)
    return (t + 1, state, token, tokens.at[:, t].set(token), logp, length, done | (token == EOS))

  def cond(loop):
    return (loop[0] < max_length) & ~jnp.all(loop[-1])

  init = (0, state, jnp.full((batch,), BOS, jnp.int32),
          jnp.full((batch, max_length), PAD, jnp.int32), jnp.zeros((batch,), jnp.float32),
          jnp.zeros((batch,), jnp.int32), jnp.zeros((batch,), bool))
  _, _, _, tokens, logp, length, _ = jax.lax.while_loop(cond, body, init)
  return tokens, logp / gnmt_penalty(length, alpha)


def _take(x, idx):
  """x [batch, K, ...], idx [batch, K'] -> x[b, idx[b, k]] [batch, K', ...]."""
  return jnp.take_along_axis(x, idx.reshape(idx.shape + (1,) * (x.ndim - 2)), axis=1)


def _beams(tree, batch: int, fn):
  """Applies ``fn`` to every leaf seen as [batch, K, ...] (leaves are [batch * K, ...])."""
  def leaf(x):
    y = fn(x.reshape((batch, -1) + x.shape[1:]))
    return y.reshape((-1,) + y.shape[2:])
  return jax.tree.map(leaf, tree)


def beam_search(step, state, memory, batch: int, beam_width: int, max_length: int, alpha):
  """Beam search as in the module docstring; returns the best (tokens, score) per example."""
  k = beam_width
  tile = lambda x: jnp.repeat(x, k, axis=0)  # [batch, ...] -> [batch * K, ...], batch-major
  state, memory = jax.tree.map(tile, state), jax.tree.map(tile, memory)
  neg = jnp.float32(-jnp.inf)

  def body(loop):
    t, state, alive_seq, alive_logp, last, fin_seq, fin_score = loop
    state, logits, _ = step(state, last.reshape(-1), memory)
    lp = log_probs(logits).reshape(batch, k, -1)  # [batch, K, V]
    vocab = lp.shape[-1]
    cand = (alive_logp[:, :, None] + lp).reshape(batch, k * vocab)
    cand_logp, idx = jax.lax.top_k(cand, min(2 * k, k * vocab))  # [batch, 2K]
    beam, token = idx // vocab, idx % vocab
    seqs = _take(alive_seq, beam).at[:, :, t].set(token)  # [batch, 2K, L]
    eos = token == EOS
    alive_logp, keep = jax.lax.top_k(jnp.where(eos, neg, cand_logp), k)
    state = _beams(state, batch, lambda x: _take(x, _take(beam, keep)))
    top = (jnp.arange(cand_logp.shape[1]) < k)[None, :]  # EOS counts only within the best K
    finished = jnp.where(eos & top, cand_logp / gnmt_penalty(t + 1, alpha), neg)
    fin_score, best = jax.lax.top_k(jnp.concatenate([fin_score, finished], axis=1), k)
    fin_seq = _take(jnp.concatenate([fin_seq, seqs], axis=1), best)
    return (t + 1, state, _take(seqs, keep), alive_logp, _take(token, keep), fin_seq, fin_score)

  def cond(loop):
    t, _, _, alive_logp, _, _, fin_score = loop
    best_alive = jnp.max(alive_logp, axis=1) / gnmt_penalty(max_length, alpha)
    return (t < max_length) & ~jnp.all(jnp.min(fin_score, axis=1) >= best_alive)

  seqs = jnp.full((batch, k, max_length), PAD, jnp.int32)
  init = (0, state, seqs, jnp.full((batch, k), neg).at[:, 0].set(0.0),
          jnp.full((batch, k), BOS, jnp.int32), seqs, jnp.full((batch, k), neg))
  _, _, alive_seq, alive_logp, _, fin_seq, fin_score = jax.lax.while_loop(cond, body, init)
  none = fin_score[:, 0] == neg  # nothing finished: the best alive hypothesis
  tokens = jnp.where(none[:, None], alive_seq[:, 0], fin_seq[:, 0])
  scores = jnp.where(none, alive_logp[:, 0] / gnmt_penalty(max_length, alpha), fin_score[:, 0])
  return tokens, scores

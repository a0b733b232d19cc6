"""Polyphonic music: predict the next piano-roll frame of a Bach chorale (88 pitches).

  python -m seqlab.run --config experiments/music.py --workdir runs/music \\
      [--config.task.path=JSB_Chorales.pickle]
  python -m seqlab.sample --workdir runs/music --length 64   # writes runs/music/samples/*.mid

Reports 'nll': the summed Bernoulli negative log-likelihood of a frame's 88 pitches,
per time step (nats), as in Boulanger-Lewandowski et al. 2012 and Chung et al. 2014.
Default data: the Bach chorales the music21 wheel ships (pip install -e '.[data]'),
parsed once at quarter-note resolution into ~/.cache/seqlab (``task.cache_dir``) and
split by sorted file name. That is NOT the standard JSB split of the published
figures (RNN 8.71 test NLL per step, Boulanger-Lewandowski et al. 2012; Chung et al.
2014, table 2: GRU 8.54; tanh 9.10 and LSTM 8.67 as recalled), so our figure
is near, not equal, to theirs; give the standard pickle with task.path to compare
exactly. The task's baseline (``Spec.baseline``: independent per-pitch frequencies,
about 12 nats per step on this split) is what a model must beat clearly.

Variants: default LSTM 128; ``:gru`` GRU 128; ``:rnn`` tanh RNN 128; ``:quick`` the
first 20 chorales, a GRU of 16 units, 10 steps (seconds; its figure means nothing).
Measured here (loaded 2-core CPU, 3 seeds; records/2026-12-07_intel-xeon-2core.md,
"Music and spoken digits"): test NLL per step LSTM 9.75 ± 0.05, ``:gru`` 9.41 ± 0.05, ``:rnn`` 9.65 ± 0.06, against
the baseline's 11.72; 11-30 minutes a run on that loaded machine.
"""
from seqlab import config as config_lib


def get_config(arg=None):
  c = config_lib.base_config()
  c.task = dict(name='music', path='', cache_dir='', pieces=0)
  c.model.cell = 'lstm'
  c.model.hidden_size = 128
  c.optim.name = 'adam'
  c.optim.lr = 3e-3
  c.optim.schedule = 'cosine'
  c.optim.clip_norm = 1.0
  c.train.steps = 600
  c.train.batch_size = 32
  c.train.eval_every = 150
  c.train.log_every = 50
  c.train.checkpoint_every = 300
  if arg in (None, '', 'lstm'):
    pass
  elif arg == 'gru':
    c.model.cell = 'gru'
  elif arg == 'rnn':
    c.model.cell = 'rnn'
  elif arg == 'quick':
    c.task.pieces = 20
    c.model.cell = 'gru'
    c.model.hidden_size = 16
    c.train.steps = 10
    c.train.batch_size = 4
    c.train.eval_every = 5
    c.train.log_every = 5
    c.train.checkpoint_every = 5
  else:
    raise ValueError(f'unknown variant {arg!r} of music.py; choose one of: lstm, gru, rnn, '
                     'quick')
  return c

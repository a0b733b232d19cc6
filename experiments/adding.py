"""The adding problem (Le, Jaitly & Hinton 2015; Arjovsky, Shah & Bengio 2016).

  python -m seqlab.run --config experiments/adding.py --workdir runs/adding

Two input channels (values uniform in [0, 1], a marker with one 1 in each half);
the target is the sum of the two marked values. Predicting 1 always gives MSE 0.167.
Expected (default, LSTM 128, T=100, 3000 steps): eval mse below 0.01 in a few minutes
on a CPU. ``:rnn`` (tanh RNN) stays at the 0.167 baseline; ``:gru`` solves it like the
LSTM; ``:t200`` and ``:t400`` are the longer published lengths (6000 steps; the LSTM's
plateau at 0.167 can outlast that, so ``python -m seqlab.reproduce`` trains it for
12000: ``--config.train.steps=12000``); ``:quick`` finishes in seconds (used by the tests).
"""
from seqlab import config as config_lib


def get_config(arg=None):
  c = config_lib.base_config()
  c.task = dict(name='adding', length=100, eval_size=1000)
  c.model.cell = 'lstm'
  c.model.hidden_size = 128
  c.optim.name = 'adam'
  c.optim.lr = 1e-3
  c.optim.clip_norm = 1.0
  c.train.steps = 3000
  c.train.batch_size = 50
  c.train.eval_every = 500
  c.train.log_every = 100
  c.train.checkpoint_every = 500
  if arg in (None, '', 'lstm'):
    pass
  elif arg == 'gru':
    c.model.cell = 'gru'
  elif arg == 'rnn':
    c.model.cell = 'rnn'
  elif arg in ('t200', 't400'):
    c.task.length = int(arg[1:])
    c.train.steps = 6000
  elif arg == 'quick':
    c.task.length = 10
    c.task.eval_size = 100
    c.model.hidden_size = 16
    c.train.steps = 40
    c.train.batch_size = 16
    c.train.eval_every = 20
    c.train.log_every = 10
    c.train.checkpoint_every = 20
  else:
    raise ValueError(f'unknown variant {arg!r} of adding.py; choose one of: lstm, gru, rnn, '
                     't200, t400, quick')
  return c


def get_sweep(arg=None):
  """The points of ``python -m seqlab.sweep --config experiments/adding.py[:variant]``.

  The learning rate against the seed, 3 x 2 points (``:quick``: 2 x 2). The points
  differ only in vmappable values, so ``--mode=vmap`` trains them in one program;
  ``python -m seqlab.report <workdir>`` then ranks them by eval mse.
  """
  from seqlab import sweep  # pylint: disable=g-import-not-at-top
  if arg == 'quick':
    return sweep.grid({'optim.lr': [1e-3, 1e-2], 'seed': [0, 1]})
  return sweep.grid({'optim.lr': [1e-3, 3e-3, 1e-2], 'seed': [0, 1]})

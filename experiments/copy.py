"""The copy memory task (Arjovsky, Shah & Bengio 2016, section 4.1).

  python -m seqlab.run --config experiments/copy.py --workdir runs/copy

Ten symbols from an alphabet of 8, then T blanks and a delimiter; the model must
then output the ten symbols. The memoryless baseline cross-entropy is
10 log 8 / (T + 20) = 0.173 at T = 100. Default: the paper's T = 100 with an LSTM
(hidden 128, RMSprop 1e-3 as in the paper). Expected: eval cross_entropy below the
baseline after a few thousand steps; ``:t200`` and longer T are where the paper found
the LSTM stuck at the baseline. ``:quick`` finishes in seconds (used by the tests).
"""
from seqlab import config as config_lib


def get_config(arg=None):
  c = config_lib.base_config()
  c.task = dict(name='copy', length=100, eval_size=1000)
  c.model.cell = 'lstm'
  c.model.hidden_size = 128
  c.model.embed_dim = 16
  c.optim.name = 'rmsprop'
  c.optim.lr = 1e-3
  c.optim.clip_norm = 1.0
  c.train.steps = 4000
  c.train.batch_size = 20
  c.train.eval_every = 500
  c.train.log_every = 100
  c.train.checkpoint_every = 500
  if arg in (None, '', 'lstm'):
    pass
  elif arg in ('t200', 't500'):
    c.task.length = int(arg[1:])
  elif arg == 'quick':
    c.task.length = 5
    c.task.eval_size = 64
    c.model.hidden_size = 16
    c.train.steps = 40
    c.train.batch_size = 16
    c.train.eval_every = 20
    c.train.log_every = 10
    c.train.checkpoint_every = 20
  else:
    raise ValueError(f'unknown variant {arg!r} of copy.py; choose one of: lstm, t200, t500, quick')
  return c

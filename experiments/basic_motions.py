"""BasicMotions (UEA archive): standing, walking, running or badminton, from a wrist
watch's 3-D accelerometer and 3-D gyroscope (6 channels, 100 steps at 10 Hz); 40 train
/ 40 test cases.

  python -m seqlab.run --config experiments/basic_motions.py --workdir runs/basic_motions \\
      [--config.task.data_dir=DIR]

Reads BasicMotions_TRAIN.ts and _TEST.ts from task.data_dir, or, when it is empty,
from the copy bundled with an installed aeon or sktime (pip install aeon). Published
test accuracy (Ruiz et al. 2021, the multivariate bake-off): 100% for most
classifiers (ROCKET, HIVE-COTE, CIF, ResNet). Measured here with a bidirectional
GRU (CPU, 2 cores, about 15 s): 97.5% (39 of 40) for seeds 0, 1 and 2.
``:quick`` finishes in seconds on 8 train / 4 test cases of the real data shipped in
experiments/data (no aeon needed; its accuracy means nothing).
"""
import os

from seqlab import config as config_lib

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'data')  # :quick's files


def get_config(arg=None):
  c = config_lib.base_config()
  c.task = dict(name='uea', dataset='BasicMotions', data_dir='', missing='error')
  c.model.cell = 'gru'
  c.model.hidden_size = 64
  c.model.bidirectional = True
  c.model.pool = 'last'
  c.optim.name = 'adam'
  c.optim.lr = 3e-3
  c.optim.schedule = 'cosine'
  c.optim.clip_norm = 1.0
  c.train.steps = 500
  c.train.batch_size = 10
  c.train.eval_every = 100
  c.train.log_every = 50
  c.train.checkpoint_every = 250
  if arg in (None, ''):
    pass
  elif arg == 'quick':
    c.task.data_dir = DATA
    c.model.hidden_size = 8
    c.train.steps = 10
    c.train.batch_size = 4
    c.train.eval_every = 5
    c.train.log_every = 5
    c.train.checkpoint_every = 5
  else:
    raise ValueError(f'unknown variant {arg!r} of basic_motions.py; choose one of: quick')
  return c

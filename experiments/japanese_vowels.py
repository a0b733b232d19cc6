"""JapaneseVowels (UEA archive; Kudo, Toyama & Shimbo 1999): which of 9 speakers said
a vowel, from 12 LPC cepstrum channels of 7 to 29 steps; 270 train / 370 test cases.

  python -m seqlab.run --config experiments/japanese_vowels.py --workdir runs/japanese_vowels \\
      [--config.task.data_dir=DIR]

Reads JapaneseVowels_TRAIN.ts and _TEST.ts from task.data_dir, or, when it is empty,
from the copy bundled with an installed aeon or sktime (pip install aeon). Padded
batches carry 'lengths'; a bidirectional LSTM's final states (each direction's, at
the case's own length) feed a linear layer. Published test accuracy (Fawaz et al.
2019, deep learning for time series classification): FCN 99.3%, ResNet 99.2%,
TWIESN 96.5%. Measured here (CPU, seeds 0, 1, 2): 98.1, 97.6, 98.1% in about 16
CPU-seconds (12-15 s wall on an idle 2-core machine); ``:gru`` (bidirectional GRU):
98.6, 97.3, 98.1%. ``:quick`` finishes in seconds on 18 train / 9 test cases of the
real data shipped in experiments/data (no aeon needed; its accuracy means nothing).
"""
import os

from seqlab import config as config_lib

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'data')  # :quick's files


def get_config(arg=None):
  c = config_lib.base_config()
  c.task = dict(name='uea', dataset='JapaneseVowels', data_dir='', missing='error')
  c.model.cell = 'lstm'
  c.model.hidden_size = 64
  c.model.bidirectional = True
  c.model.pool = 'last'
  c.optim.name = 'adam'
  c.optim.lr = 3e-3
  c.optim.schedule = 'cosine'
  c.optim.clip_norm = 1.0
  c.train.steps = 1000
  c.train.batch_size = 30
  c.train.eval_every = 250
  c.train.log_every = 50
  c.train.checkpoint_every = 500
  if arg in (None, '', 'lstm'):
    pass
  elif arg == 'gru':
    c.model.cell = 'gru'
  elif arg == 'quick':
    c.task.data_dir = DATA
    c.model.hidden_size = 8
    c.train.steps = 10
    c.train.batch_size = 4
    c.train.eval_every = 5
    c.train.log_every = 5
    c.train.checkpoint_every = 5
  else:
    raise ValueError(f'unknown variant {arg!r} of japanese_vowels.py; choose one of: lstm, '
                     'gru, quick')
  return c

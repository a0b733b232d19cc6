"""MNIST-1D (Greydanus & Kobak 2024): 40-step 1-D digits, 10 classes, 4000/1000 split.

  python -m seqlab.run --config experiments/mnist1d.py --workdir runs/mnist1d
  python -m seqlab.run --config experiments/mnist1d.py:shuffled --workdir runs/mnist1d_shuffled

The paper's GRU: bidirectional, 6 hidden units, a linear layer over the outputs of
all 40 steps (pool='flatten'), PyTorch's uniform initialisation, Adam 1e-2, batch 100,
8000 steps, no clipping. Data from the ``mnist1d`` package's generator (pip install
'seqlab[data]'). Published test accuracy: logistic regression 32%, MLP 68%, CNN 94%,
GRU 91%; with the time steps shuffled (``:shuffled``, one fixed permutation): CNN
56%, GRU 57%. Measured here (CPU, seeds 0, 1, 2; final eval, best eval in brackets):
default 90.9, 89.0, 89.5% (91.1, 89.7, 90.5%); ``:shuffled`` 54.7, 53.1, 51.0%
(57.9, 54.8, 54.6%); about 35 CPU-seconds each (30 s wall on an idle 2-core machine).
Ten seeds in one vmapped program (5 min):

  python -m seqlab.sweep --config experiments/mnist1d.py --workdir runs/mnist1d_seeds \
      --sweep 'seed=[0,1,2,3,4,5,6,7,8,9]' --mode=vmap

gave 91.2 +- 1.1% (``:shuffled``: 52.8 +- 2.3%, 55.7% at its best step).
The published 57% is the best step of the authors' own run (their notebook logs 56.8%
at step 1000, 53.3% at step 6000); ours at step 6000: 53.1 +- 2.3%.
``:quick`` finishes in seconds (used by the tests).
"""
from seqlab import config as config_lib


def get_config(arg=None):
  c = config_lib.base_config()
  c.task = dict(name='mnist1d', shuffle_time=False)
  c.model.cell = 'gru'
  c.model.hidden_size = 6
  c.model.bidirectional = True
  c.model.pool = 'flatten'
  c.model.kernel_init = 'uniform'
  c.model.recurrent_init = 'uniform'
  c.optim.name = 'adam'
  c.optim.lr = 1e-2
  c.optim.clip_norm = 0.0
  c.train.steps = 8000
  c.train.batch_size = 100
  c.train.eval_every = 500
  c.train.log_every = 250
  c.train.checkpoint_every = 2000
  if arg in (None, ''):
    pass
  elif arg == 'shuffled':
    c.task.shuffle_time = True
  elif arg == 'quick':
    c.train.steps = 20
    c.train.eval_every = 10
    c.train.log_every = 10
    c.train.checkpoint_every = 10
  else:
    raise ValueError(f'unknown variant {arg!r} of mnist1d.py; choose one of: shuffled, quick')
  return c

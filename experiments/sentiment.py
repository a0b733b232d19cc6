"""Sentence polarity: positive or negative movie-review snippets (Pang & Lee 2005,
sentence polarity data set v1.0: 5331 + 5331 sentences), or any label,text file.

  python -m seqlab.run --config experiments/sentiment.py --workdir runs/sentiment \\
      --config.task.path=DIR_WITH_rt-polarity.pos_AND_.neg   (or a label,text CSV/TSV)

There is no default data (but for ``:quick``): task.path is required (the data set is at
https://www.cs.cornell.edu/people/pabo/movie-review-data/, rt-polaritydata.tar.gz).
10% is held out by a permutation seeded with task.split_seed; the vocabulary (words
seen at least twice in the training split) comes from the training split only. A
bidirectional LSTM over word embeddings, averaged over the valid steps. Published
accuracy (10-fold cross-validation): Pang & Lee 2005 SVM 77%, Kim 2014 CNN 81.5%.
Not measured here: no installed package ships the data. ``:char`` reads characters
instead of words.
``:quick`` finishes in seconds on experiments/data/sentiment_sample.csv, 60 sentences
written for it (no download needed; its accuracy means nothing).
"""
import os

from seqlab import config as config_lib

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'data')  # :quick's files


def get_config(arg=None):
  c = config_lib.base_config()
  c.task = dict(name='sentiment', path='', level='word', test_fraction=0.1, split_seed=0,
                min_count=2, max_vocab=0, max_length=60)
  c.model.cell = 'lstm'
  c.model.hidden_size = 128
  c.model.embed_dim = 128
  c.model.bidirectional = True
  c.model.pool = 'mean'
  c.optim.name = 'adam'
  c.optim.lr = 1e-3
  c.optim.clip_norm = 1.0
  c.train.steps = 1500
  c.train.batch_size = 64
  c.train.eval_every = 250
  c.train.log_every = 50
  c.train.checkpoint_every = 500
  if arg in (None, ''):
    pass
  elif arg == 'char':
    c.task.level = 'char'
    c.task.max_length = 300
    c.task.min_count = 1
    c.model.embed_dim = 32
  elif arg == 'quick':
    c.task.path = os.path.join(DATA, 'sentiment_sample.csv')
    c.task.min_count = 1
    c.model.hidden_size = 8
    c.model.embed_dim = 8
    c.train.steps = 10
    c.train.batch_size = 4
    c.train.eval_every = 5
    c.train.log_every = 5
    c.train.checkpoint_every = 5
  else:
    raise ValueError(f'unknown variant {arg!r} of sentiment.py; choose one of: char, quick')
  return c

"""Yearly sunspot numbers 1700-2008 (statsmodels' copy of NOAA's series): forecast the
next year from the previous 22 (two solar cycles).

  python -m seqlab.run --config experiments/sunspots.py --workdir runs/sunspots

The last 20% (1947-2008, 62 one-year-ahead windows) is held out; values are scaled by
the training years' mean and standard deviation. The eval 'mse' and 'mae' are in
scaled units: the task's ``scale`` (34.06) times 'mae', and times sqrt('mse'), are
the MAE and RMSE in sunspots, which ``seqlab.tasks.forecast.forecast_report`` gives
beside the naive forecast (last year's value, ``task.season=1``): MAE 25.4, RMSE
33.3, scaled MSE 0.954 (``Spec.baseline``). ``:season11`` compares with the value 11 years back instead
(MAE 27.9, RMSE 37.9). Needs statsmodels (pip install 'seqlab[data]'). Measured here
(GRU 32, CPU, seeds 0, 1, 2): eval mse 0.414, 0.372, 0.374, i.e. MAE 16.3, 15.4, 15.3
and RMSE 21.9, 20.8, 20.8 sunspots, in about 20 s. ``:quick`` finishes in seconds
(used by the tests).
"""
from seqlab import config as config_lib


def get_config(arg=None):
  c = config_lib.base_config()
  c.task = dict(name='forecast', series='sunspots', csv='', column='', context=22, horizon=1,
                test_fraction=0.2, season=1)
  c.model.cell = 'gru'
  c.model.hidden_size = 32
  c.model.pool = 'last'
  c.optim.name = 'adam'
  c.optim.lr = 1e-3
  c.optim.schedule = 'cosine'
  c.optim.clip_norm = 1.0
  c.train.steps = 500
  c.train.batch_size = 32
  c.train.eval_every = 100
  c.train.log_every = 50
  c.train.checkpoint_every = 500
  if arg in (None, ''):
    pass
  elif arg == 'season11':
    c.task.season = 11
  elif arg == 'quick':
    c.model.hidden_size = 8
    c.train.steps = 10
    c.train.batch_size = 8
    c.train.eval_every = 5
    c.train.log_every = 5
    c.train.checkpoint_every = 5
  else:
    raise ValueError(f'unknown variant {arg!r} of sunspots.py; choose one of: season11, quick')
  return c

"""The config schema shared by every experiment, and its check at start-up.

Every experiment's ``get_config`` starts from ``base_config()`` and sets values; the
``model``, ``optim`` and ``train`` sections are locked, so a misspelt key fails in the
experiment file itself. ``validate`` checks every value before anything is compiled
and raises ``ConfigError`` with a message that names the key and the valid choices.
"""
import importlib.util
import json

import ml_collections


MAX_SEED = 2**31 - 1  # the largest int32


class ConfigError(ValueError):
  """A config value is missing, misspelt or out of range."""


def base_config() -> ml_collections.ConfigDict:
  """The shared schema with its defaults (see README.md, 'Config schema')."""
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.task = ml_collections.ConfigDict({'name': 'adding'})
  c.model = ml_collections.ConfigDict(dict(
      cell='lstm', hidden_size=128, num_layers=1, bidirectional=False, merge='concat',
      dropout=0.0, residual=False, embed_dim=32, pool='last', forget_bias=1.0,
      kernel_init='glorot_uniform', recurrent_init='auto', hoist='auto', unroll=0,
      dtype='float32', engine='auto', remat=0,
      # seq2seq tasks only (seqlab.models.seq2seq): the decoder's attention, scheduled-
      # sampling rate, layers, and hidden size (0: the encoder's output size).
      attention='bahdanau', scheduled_sampling=0.0, decoder_layers=1, decoder_hidden_size=0))
  c.optim = ml_collections.ConfigDict(dict(
      name='adam', lr=1e-3, schedule='constant', warmup_steps=0, weight_decay=0.0,
      clip_norm=1.0, clip_kind='global_norm', momentum=0.0, nesterov=False, b1=0.9,
      b2=0.999, eps=1e-8, decay_rate=0.1, boundaries=(0.5, 0.75), step_factor=0.1,
      end_lr_factor=0.0))
  c.train = ml_collections.ConfigDict(dict(
      steps=1000, batch_size=32, eval_every=500, log_every=50, checkpoint_every=500,
      keep_checkpoints=3, eval_batch_size=0, best_metric=''))
  for section in (c.model, c.optim, c.train):
    section.lock()
  return c


def _require(ok: bool, key: str, message: str):
  if not ok:
    sep = '' if message.startswith('=') else ' '
    raise ConfigError(f'config.{key}{sep}{message}')


def _positive_int(cfg, key, section, allow_zero=False):
  v = cfg[key]
  ok = isinstance(v, int) and not isinstance(v, bool) and (v >= 0 if allow_zero else v > 0)
  _require(ok, f'{section}.{key}', f'must be a {"non-negative" if allow_zero else "positive"} '
           f'integer, got {v!r}')


def _choice(cfg, key, section, choices):
  v = cfg[key]
  _require(v in choices, f'{section}.{key}',
           f'={v!r} is not valid; choose one of: {", ".join(map(str, choices))}')


def resolved(values: dict) -> dict:
  """A config as plain dicts (``config.json``) with 'auto' values that stand for a
  cell's own default replaced by that default, so that two configs compare by what
  they train: ``model.recurrent_init='auto'`` is 'orthogonal' for an LSTM, and
  nothing for a cell without a recurrent kernel."""
  from seqlab import cells  # pylint: disable=g-import-not-at-top
  out = json.loads(json.dumps(values))
  model = out.get('model', {})
  if model.get('cell') in cells.CELLS and 'recurrent_init' in model:
    own = getattr(cells.make_cell(model['cell'], 1), 'recurrent_init', None)
    if model['recurrent_init'] == 'auto' or own is None:
      model['recurrent_init'] = own
  return out


def validate(config) -> None:
  """Checks the whole config; raises ``ConfigError`` naming the first bad key."""
  from seqlab import cells, layers, models, optim, tasks  # pylint: disable=g-import-not-at-top
  missing = [s for s in ('seed', 'task', 'model', 'optim', 'train') if s not in config]
  _require(not missing, ', '.join(missing), 'is missing; start experiments from '
           'seqlab.config.base_config()')
  expected = base_config()
  for section in ('model', 'optim', 'train'):
    unknown = sorted(set(config[section]) - set(expected[section]))
    _require(not unknown, f'{section}.{unknown[0] if unknown else ""}',
             f'is not a known key; valid keys: {", ".join(sorted(expected[section]))}')
  _require(isinstance(config.seed, int) and not isinstance(config.seed, bool)
           and 0 <= config.seed <= MAX_SEED, 'seed',
           f'must be an integer in [0, 2**31 - 1] (sweeps trace it as int32), got {config.seed!r}')
  _require('name' in config.task, 'task.name', 'is missing')
  _choice(config.task, 'name', 'task', tuple(tasks.TASKS))

  m = config.model
  _choice(m, 'cell', 'model', tuple(cells.CELLS))
  for key in ('hidden_size', 'num_layers'):
    _positive_int(m, key, 'model')
  _positive_int(m, 'unroll', 'model', allow_zero=True)
  _positive_int(m, 'embed_dim', 'model', allow_zero=True)
  _require(0.0 <= m.dropout < 1.0, 'model.dropout', f'must be in [0, 1), got {m.dropout!r}')
  _choice(m, 'merge', 'model', layers.MERGES)
  _choice(m, 'pool', 'model', models.POOLS)
  _choice(m, 'hoist', 'model', tuple(models.HOIST))
  _choice(m, 'dtype', 'model', tuple(models.DTYPES))
  from seqlab.cells import initializers  # pylint: disable=g-import-not-at-top
  _choice(m, 'kernel_init', 'model', initializers.NAMES)
  _choice(m, 'recurrent_init', 'model', ('auto',) + tuple(initializers.NAMES))
  from seqlab import scan  # pylint: disable=g-import-not-at-top
  _choice(m, 'engine', 'model', scan.ENGINES)
  _positive_int(m, 'remat', 'model', allow_zero=True)
  _choice(m, 'attention', 'model', models.seq2seq.ATTENTIONS)
  _require(0.0 <= m.scheduled_sampling <= 1.0, 'model.scheduled_sampling',
           f'must be in [0, 1], got {m.scheduled_sampling!r}')
  _positive_int(m, 'decoder_layers', 'model')
  _positive_int(m, 'decoder_hidden_size', 'model', allow_zero=True)

  o = config.optim
  _choice(o, 'name', 'optim', optim.OPTIMIZERS)
  _choice(o, 'schedule', 'optim', optim.SCHEDULES)
  _choice(o, 'clip_kind', 'optim', optim.CLIP_KINDS)
  _require(o.lr > 0, 'optim.lr', f'must be positive, got {o.lr!r}')
  _positive_int(o, 'warmup_steps', 'optim', allow_zero=True)
  _require(o.weight_decay >= 0, 'optim.weight_decay', f'must be >= 0, got {o.weight_decay!r}')
  _require(o.clip_norm >= 0, 'optim.clip_norm', f'must be >= 0 (0 disables), got {o.clip_norm!r}')

  t = config.train
  for key in ('steps', 'batch_size', 'eval_every', 'log_every', 'checkpoint_every',
              'keep_checkpoints'):
    _positive_int(t, key, 'train')
  _positive_int(t, 'eval_batch_size', 'train', allow_zero=True)
  _require(o.warmup_steps < t.steps or o.warmup_steps == 0, 'optim.warmup_steps',
           f'({o.warmup_steps}) must be smaller than train.steps ({t.steps})')


def load_file(path: str, name: str = 'seqlab_experiment'):
  """The experiment file at ``path`` as a fresh module (its ``get_config``, and
  ``get_sweep`` where it has one)."""
  spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module

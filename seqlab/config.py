"""The config schema shared by every experiment, and its check at start-up.

Every experiment's ``get_config`` starts from ``base_config()`` and sets values; the
``model``, ``optim`` and ``train`` sections are locked, so a misspelt key fails in the
experiment file itself. Experiments whose task is seq2seq add ``seq2seq_section()``.
Each default lives here alone. ``validate`` checks the schema (sections and keys) and
the values nothing else checks; every other value is checked once, where it is used,
by the builders (``seqlab.train.build``), still before anything is compiled. Either
way the error names the key and the valid choices.
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
      dtype='float32', engine='auto', remat=0, newton_jacobian='diagonal', newton_tol=1e-5,
      newton_max_iters=32, newton_guess='zeros', newton_adjoint='sequential',
      newton_damping=0.0))
  c.optim = ml_collections.ConfigDict(dict(
      name='adam', lr=1e-3, schedule='constant', warmup_steps=0, weight_decay=0.0,
      clip_norm=1.0, clip_kind='global_norm', momentum=0.0, nesterov=False, b1=0.9,
      b2=0.999, eps=1e-8, decay_rate=0.1, boundaries=(0.5, 0.75), step_factor=0.1,
      end_lr_factor=0.0))
  c.train = ml_collections.ConfigDict(dict(
      steps=1000, batch_size=32, eval_every=500, log_every=50, checkpoint_every=500,
      keep_checkpoints=3, eval_batch_size=0, best_metric='', length_buckets=0))
  for section in (c.model, c.optim, c.train):
    section.lock()
  return c


def seq2seq_section() -> ml_collections.ConfigDict:
  """The ``seq2seq`` section with its defaults (see README.md, 'Config schema'), locked.

  Only experiments whose task is seq2seq add it (``c.seq2seq = seq2seq_section()``):
  the decoder's attention, scheduled-sampling rate, layers, and hidden size (0: the
  encoder's output size). A seq2seq task without it trains with these defaults.
  """
  s = ml_collections.ConfigDict(dict(
      attention='bahdanau', scheduled_sampling=0.0, decoder_layers=1, decoder_hidden_size=0))
  s.lock()
  return s


# Sections of a config: required, then optional (with their schemas).
SECTIONS = ('seed', 'task', 'model', 'optim', 'train')
OPTIONAL_SECTIONS = {'seq2seq': seq2seq_section}


# Optimizers on which optim.momentum has no effect (seqlab.optim reads it for sgd and
# rmsprop only).
MOMENTUM_FREE = ('adam', 'adamw')


def upgrade(old: dict) -> dict:
  """A ``config.json`` as written by an older seqlab -> the same run in today's schema.

  * ``model.attention``, ``model.scheduled_sampling``, ``model.decoder_layers`` and
    ``model.decoder_hidden_size`` (in every config before the ``seq2seq`` section)
    move to ``seq2seq``; those at their defaults are dropped instead, since a seq2seq
    task without the section trains with the defaults and no other task reads them.
  * ``optim.momentum`` is dropped for optimizers that ignore it (``MOMENTUM_FREE``:
    adam, adamw): its old schema default 0.9 changed nothing there. For sgd and
    rmsprop momentum changes the updates, so it is kept and a new value counts as a
    change of config (the old default 0.9 against today's 0.0 included).

  A config in today's schema keeps everything else; ``old`` is not modified.
  """
  out = json.loads(json.dumps(old))
  model = out.get('model', {})
  for key, default in seq2seq_section().items():
    if key in model and model.pop(key) != default:
      out.setdefault('seq2seq', {})[key] = old['model'][key]
  optim = out.get('optim', {})
  if optim.get('name') in MOMENTUM_FREE:
    optim.pop('momentum', None)
  return out


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
  """Checks the schema and the values no builder checks before compiling; raises
  ``ConfigError`` naming the first bad key. The other model values (cell, sizes, merge,
  dropout, pool, the scan options) and the seq2seq section's are checked where they are
  used, by ``models.build_model``, which ``seqlab.train.build`` runs next."""
  from seqlab import optim, tasks  # pylint: disable=g-import-not-at-top
  from seqlab.cells import initializers  # pylint: disable=g-import-not-at-top
  missing = [s for s in SECTIONS if s not in config]
  _require(not missing, ', '.join(missing), 'is missing; start experiments from '
           'seqlab.config.base_config()')
  unknown = sorted(set(config) - set(SECTIONS) - set(OPTIONAL_SECTIONS))
  _require(not unknown, unknown[0] if unknown else '', 'is not a known section; valid '
           f'sections: {", ".join(SECTIONS + tuple(OPTIONAL_SECTIONS))}')
  expected = base_config()
  schemas = {k: expected[k] for k in ('model', 'optim', 'train')}
  schemas.update({k: make() for k, make in OPTIONAL_SECTIONS.items() if k in config})
  for section, schema in schemas.items():
    unknown = sorted(set(config[section]) - set(schema))
    _require(not unknown, f'{section}.{unknown[0] if unknown else ""}',
             f'is not a known key; valid keys: {", ".join(sorted(schema))}')
  _require(isinstance(config.seed, int) and not isinstance(config.seed, bool)
           and 0 <= config.seed <= MAX_SEED, 'seed',
           f'must be an integer in [0, 2**31 - 1] (sweeps trace it as int32), got {config.seed!r}')
  _require('name' in config.task, 'task.name', 'is missing')
  _choice(config.task, 'name', 'task', tuple(tasks.TASKS))

  m = config.model
  _positive_int(m, 'embed_dim', 'model', allow_zero=True)
  _choice(m, 'kernel_init', 'model', initializers.NAMES)
  _choice(m, 'recurrent_init', 'model', ('auto',) + tuple(initializers.NAMES))

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
  _positive_int(t, 'length_buckets', 'train', allow_zero=True)
  _require(o.warmup_steps < t.steps or o.warmup_steps == 0, 'optim.warmup_steps',
           f'({o.warmup_steps}) must be smaller than train.steps ({t.steps})')


def load_file(path: str, name: str = 'seqlab_experiment'):
  """The experiment file at ``path`` as a fresh module (its ``get_config``, and
  ``get_sweep`` where it has one)."""
  spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module

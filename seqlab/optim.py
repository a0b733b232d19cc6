"""Config -> one ``optax.chain``: clipping, the optimizer, weight decay, the schedule.

  chain(clip,  scale_by_{sgd momentum | adam | rms},  add_decayed_weights(wd),
        scale_by_learning_rate(schedule))

so one step is ``u = -lr(t) * (opt(clip(g)) + wd * p)``. The weight decay is
*decoupled* (Loshchilov & Hutter 2019, https://arxiv.org/abs/1711.05101) for every
optimizer: it is added after the optimizer's preconditioning and scaled by the same
scheduled lr, never folded into the gradient. So ``adamw`` is exactly optax.adamw,
and ``adam`` with ``weight_decay > 0`` is the same update (not Adam with an L2 loss).

The schedule lives inside the chain (its step count is in the optimizer state), so
nothing changes hyperparameters from Python between steps. Every schedule is a linear
warmup from 0 to ``lr`` over ``warmup_steps``, then the named decay over the remaining
``total_steps - warmup_steps`` (the decay horizon). With ``total_steps == 0`` there is
no horizon and the lr stays at ``lr`` after the warmup.

The config (``optim``) is read, never written. A population (many sweep points in one
vmapped program, ``seqlab.train``) passes each point's ``lr``, ``clip_norm`` and
``weight_decay`` (``TRACEABLE``) as explicit array arguments, which stand in for the
config's values in the chain; every check and branch uses the config's plain values.
Keys (their defaults live in one place, ``seqlab.config.base_config``):
  name           one of OPTIMIZERS
  lr             peak learning rate, > 0
  schedule       one of SCHEDULES
  warmup_steps   linear warmup length, 0 <= w < total_steps
  weight_decay   decoupled decay coefficient, >= 0
  clip_norm      clipping threshold, >= 0; 0 or None disables clipping
  clip_kind      one of CLIP_KINDS; 'value' clips each entry to [-clip_norm, clip_norm]
  momentum       heavy-ball trace for sgd and rmsprop, in [0, 1) (0: none; for rmsprop the
                 trace comes before the lr, optax.rmsprop puts it after: the same
                 update while the lr is constant)
  nesterov       Nesterov momentum for sgd/rmsprop
  b1, b2, eps    adam/adamw moments; eps is rmsprop's too
  end_lr_factor  cosine/linear end value as a fraction of lr
  decay_rate     exponential: lr * decay_rate ** (t / horizon)
  boundaries     step: fractions of total_steps where lr is scaled
  step_factor    step: the scale applied at each boundary
"""
import functools
import math

import jax
import optax

OPTIMIZERS = ('sgd', 'adam', 'adamw', 'rmsprop')
SCHEDULES = ('constant', 'cosine', 'linear', 'exponential', 'step')
CLIP_KINDS = ('global_norm', 'value', 'none')
# The numbers a population may trace (one array per point) in place of the config's.
TRACEABLE = ('lr', 'clip_norm', 'weight_decay')


def _fail(key, value, why):
  raise ValueError(f'optim.{key}={value!r} {why}')


def _choice(cfg, key, choices, noun):
  value = cfg[key]
  if value not in choices:
    _fail(key, value, f'is not a known {noun}; choose one of: {", ".join(choices)}')
  return value


def _number(cfg, key, *, low=None, low_open=False, high=None, high_open=False):
  """cfg[key] as a float, checked to lie in [low, high] (open at an end if ``low_open``
  / ``high_open``)."""
  value = cfg[key]
  if value is None:
    _fail(key, value, 'is required')
  if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
    _fail(key, value, 'must be a finite number')
  if low is not None and (value <= low if low_open else value < low):
    _fail(key, value, f'must be {">" if low_open else ">="} {low}')
  if high is not None and (value >= high if high_open else value > high):
    _fail(key, value, f'must be {"<" if high_open else "<="} {high}')
  return float(value)


def _warmup_steps(cfg, total_steps):
  w = cfg['warmup_steps']
  if isinstance(w, bool) or not isinstance(w, int) or w < 0:
    _fail('warmup_steps', w, 'must be an integer >= 0')
  if total_steps > 0 and w >= total_steps:
    _fail('warmup_steps', w, f'must be < total_steps={total_steps}')
  return w


def _step_boundaries(cfg, total_steps, warmup):
  """{step after warmup: scale} for the 'step' schedule; equal boundaries multiply."""
  fractions = cfg['boundaries']
  factor = _number(cfg, 'step_factor', low=0.0, low_open=True)
  scales = {}
  for b in fractions:
    if isinstance(b, bool) or not isinstance(b, (int, float)) or not 0.0 <= b <= 1.0:
      _fail('boundaries', list(fractions), 'must be fractions of total_steps in [0, 1]')
    t = max(round(b * total_steps) - warmup, 0)
    scales[t] = scales.get(t, 1.0) * factor
  return scales


def _decay(cfg, kind, lr, total_steps, warmup):
  """The schedule after the warmup, as a function of s = t - warmup."""
  horizon = total_steps - warmup
  if kind == 'constant' or horizon <= 0:
    return optax.constant_schedule(lr)
  if kind == 'step':
    return optax.piecewise_constant_schedule(lr, _step_boundaries(cfg, total_steps, warmup))
  if kind == 'exponential':
    rate = _number(cfg, 'decay_rate', low=0.0, low_open=True)
    return optax.exponential_decay(lr, transition_steps=horizon, decay_rate=rate)
  end = lr * _number(cfg, 'end_lr_factor', low=0.0, high=1.0)
  if kind == 'cosine':
    return optax.cosine_decay_schedule(lr, horizon, alpha=end / lr)
  return optax.linear_schedule(lr, end, horizon)


def make_schedule(optim_cfg, total_steps: int, lr=None) -> optax.Schedule:
  """Learning rate as a function of the step count t (0-based).

    t < w:   lr * t / w                                     (linear warmup)
    t >= w, s = t - w, H = total_steps - w:
      constant     lr
      cosine       end + (lr - end) * (1 + cos(pi * min(s, H) / H)) / 2
      linear       lr + (end - lr) * min(s, H) / H
      exponential  lr * decay_rate ** (s / H)
      step         lr * step_factor ** #{b in boundaries : t >= max(round(b * total_steps), w)}
  with end = end_lr_factor * lr.

  Args:
    optim_cfg: the ``optim`` ConfigDict (see the module docstring); not modified.
    total_steps: number of training steps, >= 0.
    lr: an array standing in for ``optim_cfg.lr`` (a population's traced value), or None.

  Returns:
    an optax schedule, jittable, mapping a step count to a float32 learning rate.

  Raises:
    ValueError: naming the offending key when a name or a value is invalid.
  """
  if isinstance(total_steps, bool) or not isinstance(total_steps, int) or total_steps < 0:
    raise ValueError(f'total_steps={total_steps!r} must be an integer >= 0')
  plain_lr = _number(optim_cfg, 'lr', low=0.0, low_open=True)
  lr = plain_lr if lr is None else lr
  kind = _choice(optim_cfg, 'schedule', SCHEDULES, 'schedule')
  warmup = _warmup_steps(optim_cfg, total_steps)
  schedule = _decay(optim_cfg, kind, lr, total_steps, warmup)
  if warmup > 0:
    schedule = optax.join_schedules([optax.linear_schedule(0.0, lr, warmup), schedule], [warmup])
  return _standard_promotion(schedule)


def _standard_promotion(fn):
  """Runs ``fn`` under JAX's standard dtype promotion. Optax mixes its int32 step count
  with Python floats (``b1 ** count``, cosine's ``min(count, T)``), which the strict
  promotion our tests turn on would reject; the numbers are the same either way."""
  @functools.wraps(fn)
  def wrapped(*args, **kwargs):
    with jax.numpy_dtype_promotion('standard'):
      return fn(*args, **kwargs)
  return wrapped


def learning_rate(optim_cfg, total_steps: int, step: int) -> float:
  """The learning rate at ``step``, for logging; in a loop, keep ``make_schedule``'s."""
  return float(make_schedule(optim_cfg, total_steps)(step))


def _clipping(cfg, traced=None) -> list[optax.GradientTransformation]:
  kind = _choice(cfg, 'clip_kind', CLIP_KINDS, 'clipping kind')
  c = cfg['clip_norm']
  c = 0.0 if c is None else _number(cfg, 'clip_norm', low=0.0)
  if kind == 'none' or c == 0.0:
    return []
  c = c if traced is None else traced
  if kind == 'global_norm':
    return [optax.clip_by_global_norm(c)]
  return [optax.clip(c)]


def _momentum(cfg) -> list[optax.GradientTransformation]:
  """Heavy-ball (or Nesterov) trace m <- g + mu * m; nothing when mu == 0."""
  mu = _number(cfg, 'momentum', low=0.0)
  nesterov = cfg['nesterov']
  if not isinstance(nesterov, bool):
    _fail('nesterov', nesterov, 'must be True or False')
  if mu >= 1.0:
    _fail('momentum', mu, 'must be < 1')
  return [optax.trace(decay=mu, nesterov=nesterov)] if mu > 0.0 else []


def _preconditioner(cfg, name) -> list[optax.GradientTransformation]:
  """The optimizer proper, before weight decay and the learning rate."""
  # eps > 0 and b1, b2 < 1: else a zero gradient (an unused embedding row) or Adam's
  # bias correction divides 0 by 0 and the weights become NaN.
  eps = _number(cfg, 'eps', low=0.0, low_open=True)
  if name == 'sgd':
    return _momentum(cfg)
  if name == 'rmsprop':
    return [optax.scale_by_rms(decay=0.9, eps=eps)] + _momentum(cfg)
  b1 = _number(cfg, 'b1', low=0.0, high=1.0, high_open=True)
  b2 = _number(cfg, 'b2', low=0.0, high=1.0, high_open=True)
  return [optax.scale_by_adam(b1=b1, b2=b2, eps=eps)]


def make_optimizer(optim_cfg, total_steps: int, *, lr=None, clip_norm=None,
                   weight_decay=None) -> optax.GradientTransformation:
  """The whole optimizer as one chain (see the module docstring for the update).

  Args:
    optim_cfg: the ``optim`` ConfigDict; not modified.
    total_steps: number of training steps, >= 0 (the schedule's horizon).
    lr, clip_norm, weight_decay: arrays standing in for the config's values in the
      chain (``TRACEABLE``: one point of a vmapped population), or None. Whether
      clipping and weight decay are in the chain at all is decided by the config's
      values, so a population shares it.

  Returns:
    ``optax.chain(clip, optimizer, add_decayed_weights, scale_by_learning_rate)``,
    with the pieces that are switched off left out; its state is the chain's tuple of
    states (the last one holds the schedule's step count).

  Raises:
    ValueError: naming the offending key when a name or a value is invalid.
  """
  name = _choice(optim_cfg, 'name', OPTIMIZERS, 'optimizer')
  schedule = make_schedule(optim_cfg, total_steps, lr)
  wd = _number(optim_cfg, 'weight_decay', low=0.0)
  decay = ([optax.add_decayed_weights(wd if weight_decay is None else weight_decay)]
           if wd > 0.0 else [])
  tx = optax.chain(*_clipping(optim_cfg, clip_norm), *_preconditioner(optim_cfg, name), *decay,
                   optax.scale_by_learning_rate(schedule))
  return optax.GradientTransformationExtraArgs(_standard_promotion(tx.init),
                                              _standard_promotion(tx.update))

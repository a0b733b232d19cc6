"""seqlab.optim against hand formulas written out in NumPy (no optax on that side)."""
import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from seqlab import config as config_lib
from seqlab import optim

T = 40


def config(**kw):
  """The schema's ``optim`` section (its defaults) with sgd at lr 0.1, no clipping, and ``kw``."""
  base = config_lib.base_config().optim.to_dict()
  base.update(name='sgd', lr=0.1, clip_norm=0.0)
  base.update(kw)
  return ml_collections.FrozenConfigDict(base)  # frozen: the module must never write


def reference_lr(kind, t, lr, total, w, end_f=0.0, rate=0.1, bounds=(0.5, 0.75), factor=0.1):
  """The schedule as documented in optim.make_schedule, in plain Python."""
  if t < w:
    return lr * t / w
  s, h = t - w, total - w
  end = end_f * lr
  if kind == 'constant':
    return lr
  if kind == 'cosine':
    return end + (lr - end) * 0.5 * (1 + math.cos(math.pi * min(s, h) / h))
  if kind == 'linear':
    return lr + (end - lr) * min(s, h) / h
  if kind == 'exponential':
    return lr * rate ** (s / h)
  return lr * factor ** sum(t >= max(round(b * total), w) for b in bounds)


@pytest.mark.parametrize('kind', optim.SCHEDULES)
@pytest.mark.parametrize('warmup', [0, 8])
def test_schedule_matches_hand_formula(kind, warmup):
  cfg = config(schedule=kind, warmup_steps=warmup, lr=0.3)
  sched = optim.make_schedule(cfg, T)
  for t in sorted({0, 1, 3, warmup, warmup + 1, 19, 20, 29, 30, 31, T - 1, T, T + 7}):
    np.testing.assert_allclose(float(sched(t)), reference_lr(kind, t, 0.3, T, warmup),
                               rtol=1e-5, atol=1e-8, err_msg=f'{kind} at t={t}')
    assert optim.learning_rate(cfg, T, t) == pytest.approx(float(sched(t)))


@pytest.mark.parametrize('kind,extra,ref', [
    ('cosine', dict(end_lr_factor=0.1), dict(end_f=0.1)),
    ('linear', dict(end_lr_factor=0.25), dict(end_f=0.25)),
    ('exponential', dict(decay_rate=0.5), dict(rate=0.5)),
    ('step', dict(boundaries=[0.25, 0.25, 0.9], step_factor=0.5),
     dict(bounds=(0.25, 0.25, 0.9), factor=0.5)),
])
def test_schedule_options(kind, extra, ref):
  sched = optim.make_schedule(config(schedule=kind, warmup_steps=4, **extra), T)
  for t in range(0, T + 3):
    np.testing.assert_allclose(float(sched(t)), reference_lr(kind, t, 0.1, T, 4, **ref),
                               rtol=1e-5, atol=1e-8, err_msg=f'{kind} at t={t}')


def test_zero_total_steps_holds_lr_after_warmup():
  sched = optim.make_schedule(config(schedule='cosine', warmup_steps=5), 0)
  assert [float(sched(t)) for t in (0, 5, 100)] == pytest.approx([0.0, 0.1, 0.1])


def test_schedule_is_inside_the_chain():
  """The k-th update of momentum-free sgd is -lr(k) * g, with no Python in between."""
  cfg = config(schedule='cosine', warmup_steps=3, momentum=0.0)
  tx = optim.make_optimizer(cfg, T)
  g = {'w': jnp.array([1.0, -2.0])}
  state = tx.init(g)
  update = jax.jit(tx.update)
  for k in range(12):
    u, state = update(g, state)
    expected = -reference_lr('cosine', k, 0.1, T, 3) * np.array([1.0, -2.0])
    np.testing.assert_allclose(u['w'], expected, rtol=1e-5, atol=1e-8)
  assert update._cache_size() == 1  # the step count lives in the state: no recompiles


@pytest.mark.parametrize('scale', [0.1, 10.0])
def test_global_norm_clipping_matches_hand_step(scale):
  c, lr = 1.0, 0.5
  tx = optim.make_optimizer(config(lr=lr, momentum=0.0, clip_norm=c), T)
  g = {'a': scale * jnp.array([3.0, 4.0]), 'b': scale * jnp.array([[12.0]])}
  u, _ = tx.update(g, tx.init(g))
  norm = scale * 13.0
  for k in g:
    np.testing.assert_allclose(u[k], -lr * np.asarray(g[k]) * min(1.0, c / norm), rtol=1e-6)


def test_value_clipping_matches_hand_step():
  tx = optim.make_optimizer(config(lr=0.5, momentum=0.0, clip_norm=1.0, clip_kind='value'), T)
  g = jnp.array([-3.0, 0.25, 2.0])
  u, _ = tx.update(g, tx.init(g))
  np.testing.assert_allclose(u, -0.5 * np.clip(np.asarray(g), -1.0, 1.0), rtol=1e-6)


@pytest.mark.parametrize('clip', [dict(clip_norm=0.0), dict(clip_norm=None),
                                  dict(clip_norm=1.0, clip_kind='none')])
def test_clipping_off(clip):
  tx = optim.make_optimizer(config(lr=0.5, momentum=0.0, **clip), T)
  g = jnp.array([30.0, -40.0])
  u, _ = tx.update(g, tx.init(g))
  np.testing.assert_allclose(u, -0.5 * np.asarray(g), rtol=1e-6)


def test_adamw_first_step_matches_hand_formula():
  lr, wd, eps = 0.01, 0.1, 1e-8
  tx = optim.make_optimizer(config(name='adamw', lr=lr, weight_decay=wd), T)
  p = jnp.array([1.0, -2.0, 0.5])
  g = jnp.array([0.3, 0.0, -4.0])
  u, _ = tx.update(g, tx.init(p), p)
  # Step 1: m_hat = g, v_hat = g^2, so adam's direction is g / (|g| + eps).
  gn, pn = np.asarray(g), np.asarray(p)
  # rtol: float32 rounds (1 - b2) and 1 - b2**1 differently, about 1e-5 relative.
  np.testing.assert_allclose(u, -lr * (gn / (np.abs(gn) + eps) + wd * pn), rtol=2e-5)
  ref = optax.adamw(lr, weight_decay=wd)
  with jax.numpy_dtype_promotion('standard'):  # optax itself is not strict-promotion clean
    u_ref, _ = ref.update(g, ref.init(p), p)
  np.testing.assert_allclose(u, u_ref, rtol=1e-6)


def test_sgd_weight_decay_is_decoupled():
  """For sgd without momentum: u = -lr * (g + wd * p), decay added after the optimizer."""
  tx = optim.make_optimizer(config(lr=0.1, momentum=0.0, weight_decay=0.5), T)
  p, g = jnp.array([2.0, -1.0]), jnp.array([0.5, 0.5])
  u, _ = tx.update(g, tx.init(p), p)
  np.testing.assert_allclose(u, -0.1 * (np.asarray(g) + 0.5 * np.asarray(p)), rtol=1e-6)


def test_sgd_momentum_matches_hand_loop():
  mu, lr = 0.9, 0.1
  tx = optim.make_optimizer(config(lr=lr, momentum=mu, nesterov=False), T)
  gs = [np.array([1.0, -1.0]), np.array([0.5, 2.0]), np.array([-1.0, 0.0])]
  state, m = tx.init(jnp.zeros(2)), np.zeros(2)
  for g in gs:
    u, state = tx.update(jnp.asarray(g), state)
    m = g + mu * m
    np.testing.assert_allclose(u, -lr * m, rtol=1e-6)


@pytest.mark.parametrize('name,extra,reference', [
    ('sgd', dict(momentum=0.9), optax.sgd(0.1, momentum=0.9)),
    ('sgd', dict(momentum=0.8, nesterov=True), optax.sgd(0.1, momentum=0.8, nesterov=True)),
    ('adam', dict(b1=0.8, b2=0.99, eps=1e-6), optax.adam(0.1, b1=0.8, b2=0.99, eps=1e-6)),
    ('adamw', dict(weight_decay=0.3), optax.adamw(0.1, weight_decay=0.3)),
    ('rmsprop', dict(momentum=0.5), optax.rmsprop(0.1, momentum=0.5)),
])
def test_matches_optax_own_optimizer(name, extra, reference):
  """With a constant lr, each chain is the optax optimizer of the same name."""
  tx = optim.make_optimizer(config(name=name, **extra), T)
  p = jnp.array([1.0, -2.0, 0.5])
  s, s_ref = tx.init(p), reference.init(p)
  for k in range(5):
    g = jnp.array([0.3, -1.0, 2.0]) * (k + 1) - p
    u, s = tx.update(g, s, p)
    with jax.numpy_dtype_promotion('standard'):  # optax itself is not strict-clean
      u_ref, s_ref = reference.update(g, s_ref, p)
    np.testing.assert_allclose(u, u_ref, rtol=1e-5, atol=1e-7, err_msg=f'step {k}')
    p = p + u


@pytest.mark.parametrize('name,lr', [('sgd', 0.05), ('adam', 0.1), ('adamw', 0.1),
                                     ('rmsprop', 0.05)])
@pytest.mark.parametrize('kind', ['constant', 'cosine'])
def test_each_optimizer_decreases_a_quadratic(name, lr, kind):
  a = jnp.array([1.0, 4.0, 0.5])
  target = jnp.array([1.0, -2.0, 3.0])

  def loss(p):
    return 0.5 * jnp.sum(a * (p['w'] - target) ** 2)

  tx = optim.make_optimizer(config(name=name, lr=lr, schedule=kind, warmup_steps=10,
                                   weight_decay=1e-4, clip_norm=10.0), 200)

  @jax.jit
  def step(p, s):
    u, s = tx.update(jax.grad(loss)(p), s, p)
    return optax.apply_updates(p, u), s

  p = {'w': jnp.zeros(3)}
  s = tx.init(p)
  first = float(loss(p))
  for _ in range(200):
    p, s = step(p, s)
  assert float(loss(p)) < 0.05 * first, (name, kind, float(loss(p)), first)


@pytest.mark.parametrize('key,value,total', [
    ('name', 'adm', T), ('schedule', 'cosin', T), ('clip_kind', 'norm', T),
    ('lr', 0.0, T), ('lr', -1.0, T), ('warmup_steps', -1, T), ('warmup_steps', T, T),
    ('weight_decay', -0.1, T), ('clip_norm', -1.0, T), ('momentum', 1.5, T),
    ('nesterov', 'yes', T), ('end_lr_factor', -0.5, T), ('boundaries', [1.5], T),
    ('eps', 0.0, T), ('b1', 1.0, T), ('b2', 1.0, T),  # 0 / 0: NaN weights
])
def test_bad_values_raise_naming_the_key(key, value, total):
  kw = {'schedule': {'end_lr_factor': 'cosine', 'boundaries': 'step'}.get(key, 'constant')}
  if key in ('eps', 'b1', 'b2'):
    kw['name'] = 'adam'
  kw[key] = value
  cfg = config(**kw)
  with pytest.raises(ValueError, match=f'optim.{key}='):
    optim.make_optimizer(cfg, total)


def test_error_message_lists_the_choices():
  with pytest.raises(ValueError) as e:
    optim.make_optimizer(config(name='adm'), T)
  assert str(e.value) == ("optim.name='adm' is not a known optimizer; "
                          'choose one of: sgd, adam, adamw, rmsprop')


def test_warmup_may_equal_anything_without_a_horizon():
  optim.make_optimizer(config(warmup_steps=5), 0)  # total_steps == 0: no bound on warmup

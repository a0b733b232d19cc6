"""Population training: the points of a sweep that share one program train as one.

K points that differ only in values that change neither a shape nor the compiled
program (``VMAPPABLE``) are stacked along a leading population axis and trained by
one jitted, vmapped ``train.train_step``:

  states[k], metrics[k] = train_step(states[k], batches[k], optimizer=optimizer_k)

* ``train.train_step`` is used unchanged. Each point's optimizer is built inside the
  traced function from a view of the shared ``optim`` config whose lr, clip_norm and
  weight_decay are that point's traced values (``_OptimView``), so the optimizer state
  has exactly the layout of a separate run's.
* Init-only values (``seed``, the forget-gate bias, the initialiser names) never reach
  the program: each point's state is created as its separate run creates it, and each
  point reads its own batches (the data order depends on the seed), stacked along K.
* Every point keeps a normal run's workdir (config.json, run_info.json, metrics.jsonl,
  tensorboard/, checkpoints/, best/), so seqlab.evaluate and seqlab.run work on it and
  the population resumes from those checkpoints.
* A point whose loss stops being finite stops writing (its last good checkpoint is
  kept) and is reported; the others go on.
* Over several devices the population axis is split over them (``P('pop')``) when K is
  a multiple of the device count; otherwise the population is replicated. One host.

``model.dropout`` is not vmappable: ``layers.StackedRNN`` and flax's ``nn.Dropout``
branch on the rate in Python, so a traced rate cannot reach them; points that differ
in it (or in a shape, a name, a step count) need programs of their own.

A point's results equal its separate run within float tolerance, not bitwise: the
vmapped matmuls may sum in another order.
"""
import collections
import contextlib
import functools
import json
import time

from absl import logging
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from seqlab import checkpoint
from seqlab import cli
from seqlab import losses
from seqlab import optim
from seqlab import train
from seqlab import workdir as workdir_lib

# Values the program reads as per-point arrays (the optimizer's numbers).
TRACED = ('optim.lr', 'optim.clip_norm', 'optim.weight_decay')
# Values used only to create the state and the data, outside the program.
INIT_ONLY = ('seed', 'model.forget_bias', 'model.kernel_init', 'model.recurrent_init')
VMAPPABLE = TRACED + INIT_ONLY


def _flat(tree, prefix=''):
  """{'optim': {'lr': 1}} -> {'optim.lr': 1}."""
  out = {}
  for k, v in tree.items():
    if isinstance(v, dict):
      out.update(_flat(v, f'{prefix}{k}.'))
    else:
      out[f'{prefix}{k}'] = v
  return out


def _switches(config) -> dict:
  """The on/off choices that the traced values make in the optimizer's structure."""
  o = config.optim
  return {'clipping on/off': o.clip_kind != 'none' and bool(o.clip_norm),
          'weight decay on/off': o.weight_decay > 0}


def signature(config) -> str:
  """What points must share to train in one program: the config less ``VMAPPABLE``."""
  flat = {k: v for k, v in _flat(config.to_dict()).items() if k not in VMAPPABLE}
  return json.dumps({**flat, **_switches(config)}, sort_keys=True, default=repr)


def partition(configs) -> list[list[int]]:
  """Indices of ``configs`` grouped by ``signature``, in order of first appearance."""
  groups = collections.defaultdict(list)
  for i, config in enumerate(configs):
    groups[signature(config)].append(i)
  return list(groups.values())


def split_reasons(configs) -> list[str]:
  """The keys (or optimizer switches) that keep some of ``configs`` out of one program."""
  flats = [{**_flat(c.to_dict()), **_switches(c)} for c in configs]
  keys = sorted(set().union(*flats) - set(VMAPPABLE))
  return [k for k in keys if len({repr(f.get(k)) for f in flats}) > 1]


class _OptimView:
  """A read-only ``optim`` config whose ``traced`` values are one point's arrays.

  ``optim.make_optimizer`` checks and branches on the plain values of ``cfg`` (the
  same for every point of a population: see ``signature``) and builds the chain from
  the arrays in ``traced``.
  """

  def __init__(self, cfg, traced: dict):
    self._cfg, self.traced = cfg, traced

  def get(self, key, default=None):
    return self._cfg.get(key, default)

  def __getattr__(self, key):
    return getattr(self._cfg, key)

  def __getitem__(self, key):
    return self._cfg[key]

  def __contains__(self, key):
    return key in self._cfg


def population_step(states, batches, values, *, model, optim_cfg, total_steps, spec):
  """``train.train_step`` vmapped over K points; ``values`` holds [K] optimizer numbers.

  Args:
    states: stacked train states, every leaf [K, ...].
    batches: stacked batches, every entry [K, batch, ...].
    values: {'lr', 'clip_norm', 'weight_decay'} -> float32 [K].

  Returns:
    (states, metrics), every leaf [K, ...].
  """
  def one(state, batch, vals):
    optimizer = optim.make_optimizer(_OptimView(optim_cfg, vals), total_steps)
    return train.train_step(state, batch, model=model, optimizer=optimizer, spec=spec)
  return jax.vmap(one)(states, batches, values)


def _stack(trees):
  return jax.tree.map(lambda *xs: np.stack(xs) if isinstance(xs[0], np.ndarray)
                      else jnp.stack(xs), *trees)


def _point(tree, i):
  return jax.tree.map(lambda x: x[i], tree)


def population_sharding(k: int):
  """P('pop') over every device when K is a multiple of their count, else replicated."""
  n = jax.device_count()
  if n == 1:
    return None
  mesh = Mesh(np.array(jax.devices()), ('pop',))
  return NamedSharding(mesh, P('pop') if k % n == 0 else P())


def _evaluate(eval_fn, params, tasks, batch_size, carry, put) -> list[dict]:
  """Each point's aggregated metrics over its own held-out split (``train.evaluate``)."""
  results = [[] for _ in tasks]
  for b in range(tasks[0].num_eval_batches(batch_size)):
    batch = _stack([t.batch('eval', b, batch_size) for t in tasks])
    metrics, carry = eval_fn(params, put(batch), carry)
    metrics = jax.device_get(metrics)
    for i, rows in enumerate(results):
      rows.append({k: v[i] for k, v in metrics.items()})
  return [losses.aggregate(rows, [float(r['count']) for r in rows]) for rows in results]


def _restore(configs, workdirs):
  """Builds every point and restores (or creates) its state like ``train_and_evaluate``.

  Returns (built [(task, model, optimizer)], checkpointers, states, start steps).
  """
  built = [train.build(c) for c in configs]
  spec = built[0][0].spec
  inits = {}  # one compiled init per distinct model: seeds are arguments
  mesh = train.make_mesh()
  ckpts, states, starts = [], [], []
  for config, workdir, (task, model, optimizer) in zip(configs, workdirs, built):
    if not 0 <= config.seed < 2**31:  # traced as int32 below
      raise ValueError(f'seed={config.seed} is out of [0, 2**31) for a population')
    tc = config.train
    metric, mode = losses.best_metric(spec, tc.best_metric)
    example = task.batch('train', 0, tc.batch_size)
    key = json.dumps(config.model.to_dict(), sort_keys=True)
    if key not in inits:
      inits[key] = jax.jit(functools.partial(train.create_state, model, optimizer,
                                             stateful=spec.stateful))
    init = inits[key]
    ckpt = checkpoint.Checkpointer(workdir, keep=tc.keep_checkpoints,
                                   best_metric=metric, best_mode=mode)
    abstract = train.restore_target(jax.eval_shape(init, example, np.int32(config.seed)), mesh)
    restored = ckpt.restore_latest(abstract)
    state = init(example, np.int32(config.seed)) if restored is None else restored[0]
    ckpts.append(ckpt)
    states.append(state)
    starts.append(int(state['step']))
  return built, ckpts, states, starts


def train_population(configs, workdirs) -> list:
  """Trains the K points ``configs`` (one ``signature``) in ``workdirs`` as one program.

  Resumes every point from its own latest checkpoint; points found at different
  steps train as separate populations. Returns one entry per point: its final eval
  metrics (dict), the error message of a point whose loss stopped being finite
  (str), or None for a point interrupted by SIGTERM/SIGINT (saved; run again).
  """
  configs = [ml_collections.FrozenConfigDict(c) for c in configs]  # never mutated
  if len({signature(c) for c in configs}) != 1:
    raise ValueError('these points cannot share one program; they differ in: '
                     + ', '.join(split_reasons(configs)))
  with contextlib.ExitStack() as locks:  # one run at a time in a workdir, as seqlab.run
    for w in workdirs:
      locks.enter_context(workdir_lib.lock(w))
    for c, w in zip(configs, workdirs):
      workdir_lib.prepare(w, c)
    built, ckpts, states, starts = _restore(configs, workdirs)
    if len(set(starts)) == 1:
      return _train(configs, workdirs, built, ckpts, states, starts[0])
    for ckpt in ckpts:  # a save cut short, a point retried from 0: train apart
      ckpt.close()
  # The locks are released here: each sub-population takes its own.
  results = [None] * len(configs)
  for start in sorted(set(starts)):
    idx = [i for i, s in enumerate(starts) if s == start]
    sub = train_population([configs[i] for i in idx], [workdirs[i] for i in idx])
    for i, r in zip(idx, sub):
      results[i] = r
    if any(r is None for r in sub):  # interrupted: start no other (theirs stay None)
      break
  return results


def _train(configs, workdirs, built, ckpts, states, start) -> list:
  """The loop of ``train_population`` (``train.train_and_evaluate``'s, over K points)."""
  # --- Input, model and optimizer -------------------------------------------------
  k, config = len(configs), configs[0]
  tasks = [b[0] for b in built]
  model, spec, tc = built[0][1], tasks[0].spec, config.train
  eval_bs = tc.eval_batch_size or tc.batch_size
  best_metric, _ = losses.best_metric(spec, tc.best_metric)
  schedules = [optim.make_schedule(c.optim, tc.steps) for c in configs]
  sharding = population_sharding(k)
  put = functools.partial(jax.device_put, device=sharding)
  states = put(_stack(states))
  values = put({name.split('.')[1]: np.array([c.optim[name.split('.')[1]] for c in configs],
                                             np.float32) for name in TRACED})
  writers = [workdir_lib.MetricWriter(w, resume_step=start) for w in workdirs]
  n = jax.device_count()
  logging.info('Population of %d points %s at step %d, %s', k, 'resumed' if start else
               'starting', start, 'on one device' if n == 1 else
               f'population axis split over {n} devices' if k % n == 0 else
               f'replicated over {n} devices ({k} points do not split over them)')

  # --- Update and eval steps ------------------------------------------------------
  p_train = jax.jit(functools.partial(population_step, model=model, optim_cfg=config.optim,
                                      total_steps=tc.steps, spec=spec), donate_argnums=0)
  p_eval = jax.jit(jax.vmap(functools.partial(train.eval_step, model=model, spec=spec)))
  eval_carry = (put(_stack([model.initial_carry(eval_bs)] * k))
                if spec.stateful else None)
  example = _stack([t.batch('train', 0, tc.batch_size) for t in tasks])
  tokens_per_step = int(np.prod(example['inputs'].shape[1:3]))
  t0 = time.perf_counter()
  p_train = p_train.lower(states, put(example), values).compile()
  logging.info('Compiled the population step in %.1f s', time.perf_counter() - t0)

  failed = [None] * k  # the message of a point whose loss stopped being finite

  def check_finite(states):
    for i, bad in enumerate(np.asarray(jax.device_get(states['bad_step']))):
      if bad > 0 and failed[i] is None:
        last = ckpts[i].latest_step()
        failed[i] = (f'loss, gradient or new weights are not finite at step {bad}; the last good '
                     f'checkpoint ({"none" if last is None else f"step {last}"}) in '
                     f'{workdirs[i]} is kept. Lower optim.lr, set optim.clip_norm, or '
                     'check the data.')
        logging.warning('point %s stopped: %s', workdirs[i], failed[i])
    return [i for i in range(k) if failed[i] is None]

  def run_eval(states, step, active):
    metrics = _evaluate(p_eval, states['params'], tasks, eval_bs, eval_carry, put)
    for i in active:
      metrics[i].update(train.decoded_metrics(model, _point(states['params'], i), tasks[i],
                                              eval_bs))
      writers[i].write(step, 'eval', metrics[i])
      ckpts[i].save_best(step, _point(states, i), {best_metric: metrics[i][best_metric]})
    return metrics

  # --- The loop -----------------------------------------------------------------------
  progress = workdir_lib.Progress(tc.steps, start)
  pending, t_log, eval_metrics, interrupted = [], time.perf_counter(), None, False
  active = list(range(k))
  with cli.Interrupt() as interrupt:
    for step in range(start + 1, tc.steps + 1):
      batch = _stack([t.batch('train', step - 1, tc.batch_size) for t in tasks])
      states, metrics = p_train(states, put(batch), values)
      pending.append(metrics)
      stop = interrupt.signal  # read once: it may arrive at any moment
      boundary = step == tc.steps or stop is not None
      if step % tc.log_every == 0 or boundary:
        active = check_finite(states)
        rows = jax.device_get(pending)
        elapsed = time.perf_counter() - t_log
        for i in active:
          row = train.window_metrics([{k: v[i] for k, v in r.items()} for r in rows])
          row.update(learning_rate=float(schedules[i](step - 1)),
                     step_time=elapsed / len(rows),
                     tokens_per_sec=tokens_per_step * len(rows) / elapsed)
          writers[i].write(step, 'train', row)
        if active:
          progress.update(step, float(np.median([np.mean([r['loss'][i] for r in rows])
                                                 for i in active])))
        pending, t_log = [], time.perf_counter()
      if step % tc.eval_every == 0 or step == tc.steps:
        active = check_finite(states)
        eval_metrics = run_eval(states, step, active)
        t_log = time.perf_counter()
      if step % tc.checkpoint_every == 0 or boundary:
        active = check_finite(states)
        for i in active:
          ckpts[i].save(step, _point(states, i), force=stop is not None)
      if not active:
        break
      if stop:
        interrupted = True
        for ckpt in ckpts:
          ckpt.wait()
        print(f'{stop}: saved every point at step {step}; run the same '
              'command to resume.', flush=True)
        break
  progress.close()
  if eval_metrics is None and int(states['step'][0]) >= tc.steps:
    eval_metrics = run_eval(states, tc.steps, check_finite(states))  # resumed at the end
  for ckpt, writer in zip(ckpts, writers):
    ckpt.wait()
    ckpt.close()
    writer.close()
  if interrupted:
    return [failed[i] for i in range(k)]
  return [failed[i] or eval_metrics[i] for i in range(k)]

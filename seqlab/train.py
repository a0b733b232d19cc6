"""Training: create_state, train_step, eval_step (pure), and the loop (a function).

The state is a plain pytree ``{'step', 'params', 'opt_state', 'rng', 'bad_step'}``.
Data order is a pure function of (seed, step), so restoring ``step`` restores the
data position, and a run resumed from any checkpoint ends bitwise equal to an
uninterrupted one.
"""
import contextlib
import dataclasses
import functools
import json
import os
import time
from typing import Any

from absl import logging
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from seqlab import checkpoint
from seqlab import cli
from seqlab import config as config_lib
from seqlab import losses
from seqlab import memory
from seqlab import models
from seqlab import newton
from seqlab import optim
from seqlab import tasks
from seqlab import workdir as workdir_lib


class NonFiniteError(RuntimeError):
  """The loss, the gradient or the new weights stopped being finite."""


def build(config):
  """Validated config -> (task, model, optimizer); fails before any compile."""
  config_lib.validate(config)
  try:
    task = tasks.length_buckets(tasks.make_task(config.task, config.seed),
                                config.train.length_buckets)
    losses.best_metric(task.spec, config.train.best_metric)
    model = models.build_model(config.model, task.spec, config.get('seq2seq'))
    optimizer = optim.make_optimizer(config.optim, config.train.steps)
    # Data too small for a batch fails here, not after training.
    task.batch('train', 0, config.train.batch_size)
    eval_batch_size = config.train.eval_batch_size or config.train.batch_size
    task.batch('eval', 0, eval_batch_size)
    task.num_eval_batches(eval_batch_size, 'test')  # sized, not read: test is read at the end
  except (ValueError, FileNotFoundError) as e:
    raise config_lib.ConfigError(str(e)) from None
  return task, model, optimizer


NON_MODEL_KEYS = ('targets', 'target_mask', 'reset', 'example_weight')


def model_inputs(batch) -> dict:
  """The batch entries a model takes as keyword arguments (inputs, lengths, ...)."""
  return {k: v for k, v in batch.items() if k not in NON_MODEL_KEYS}


def apply_model(model, params, batch, carry=None, **kwargs):
  """``model.apply`` on a batch -> (outputs, aux); ``carry`` continues stateful streams.

  For stateful tasks ``carry`` is the previous batch's final carry, zeroed where
  ``batch['reset']`` says the streams start again; aux is then the new carry.
  """
  inputs = model_inputs(batch)
  if carry is not None:
    reset = batch['reset']
    inputs['initial_carry'] = jax.tree.map(lambda c: jnp.where(reset, jnp.zeros_like(c), c),
                                           carry)
  return model.apply(params, **inputs, **kwargs)


def create_state(model, optimizer, batch, seed: int, stateful: bool = False):
  """Initial train state from an example batch (shapes are enough: eval_shape works)."""
  init_rng, dropout_rng = jax.random.split(jax.random.key(seed))
  params = model.init(init_rng, **model_inputs(batch))
  state = {
      'step': jnp.zeros((), jnp.int32),
      'params': params,
      'opt_state': optimizer.init(params),
      'rng': jax.random.key_data(dropout_rng),
      'bad_step': jnp.zeros((), jnp.int32),  # first update with a non-finite loss, grad or weights
  }
  if stateful:
    state['carry'] = model.initial_carry(batch['inputs'].shape[0])
  return state


def window_metrics(rows: list[dict]) -> dict[str, float]:
  """One train log row from the metrics of the steps since the last: the loss and the
  task's metrics weighted by each step's 'count' (the window's metrics as if one batch;
  'bpc' and 'perplexity' from its cross-entropy, 'count' summed), 'grad_norm' (and
  the Newton engine's 'newton_iterations') the mean over steps, 'newton_fallbacks' summed."""
  by_step = {'grad_norm': np.mean, 'newton_iterations': np.mean, 'newton_fallbacks': np.sum}
  counts = [float(r['count']) for r in rows]
  steps = [{k: v for k, v in r.items() if k not in by_step} for r in rows]
  row = losses.aggregate(steps, counts if sum(counts) > 0 else [1.0] * len(rows))
  for key, reduce in by_step.items():
    if key in rows[0]:
      row[key] = float(reduce([r[key] for r in rows]))
  return row


def train_step(state, batch, *, model, optimizer, spec):
  """One update. Pure: (state, batch) -> (state, metrics).

  An update whose loss, gradient or new weights are not finite changes nothing but ``bad_step``
  (set to its 1-based number), so the state stays the last good one and the loop
  can stop naming the step. The dropout key of step s is ``fold_in(rng, s)``.
  """
  rng = jax.random.fold_in(jax.random.wrap_key_data(state['rng']), state['step'])
  carry = state.get('carry')

  def loss_fn(params):
    (outputs, aux), sown = apply_model(model, params, batch, carry, deterministic=False,
                                       rngs={'dropout': rng}, mutable=[newton.COLLECTION])
    loss, metrics = losses.loss_and_metrics(spec, outputs, batch)
    return loss, (dict(metrics, **newton.step_stats(sown)), aux)

  (loss, (metrics, aux)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state['params'])
  grad_norm = optax.tree.norm(grads)
  updates, opt_state = optimizer.update(grads, state['opt_state'], state['params'])
  params = optax.apply_updates(state['params'], updates)
  # The new weights too: a finite gradient can still give NaN ones (Adam's 0 / 0). Leaf
  # by leaf, as a norm of large finite weights would overflow.
  finite = jax.tree.leaves(jax.tree.map(lambda p: jnp.all(jnp.isfinite(p)), params))
  ok = jnp.isfinite(loss) & jnp.isfinite(grad_norm) & functools.reduce(jnp.logical_and, finite)
  keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(ok, n, o), new, old)
  new_state = {
      'step': state['step'] + 1,
      'params': keep(params, state['params']),
      'opt_state': keep(opt_state, state['opt_state']),
      'rng': state['rng'],
      'bad_step': jnp.where((state['bad_step'] == 0) & ~ok, state['step'] + 1,
                            state['bad_step']),
  }
  if carry is not None:
    new_state['carry'] = keep(jax.lax.stop_gradient(aux), carry)
  return new_state, dict(metrics, grad_norm=grad_norm)


def eval_step(params, batch, carry, *, model, spec):
  """Metrics of one held-out batch (dropout off) and the carry for the next batch."""
  outputs, aux = apply_model(model, params, batch, carry, deterministic=True)
  return losses.loss_and_metrics(spec, outputs, batch)[1], (aux if carry is not None else None)


def evaluate(eval_fn, model, params, task, batch_size: int, carry=None, split: str = 'eval',
             **decode_options) -> dict:
  """One run's metrics over the task's whole held-out ``split`` (``evaluate_points`` for
  one point); ``decode_options`` (method, beam_width, length_penalty) go to a decoding
  model's ``models.decoded_metrics``."""
  return evaluate_points(eval_fn, model, params, [task], batch_size, carry, One(), split,
                         **decode_options)[0]


# --- Devices -------------------------------------------------------------------------


def make_mesh():
  """A 1-D mesh 'data' over every visible device (all hosts)."""
  return Mesh(np.array(jax.devices()), ('data',))  # automatic (not explicit) sharding


def batch_sharding(mesh, batch) -> dict:
  """Arrays with a batch axis are split over 'data'; scalars are replicated."""
  return {k: NamedSharding(mesh, P('data') if np.ndim(v) else P()) for k, v in batch.items()}


def state_sharding(mesh, abstract_state):
  """Everything replicated, except stateful carries, split over the batch like the data."""
  replicated = NamedSharding(mesh, P())
  shardings = jax.tree.map(lambda _: replicated, abstract_state)
  if 'carry' in abstract_state:
    shardings['carry'] = jax.tree.map(lambda _: NamedSharding(mesh, P('data')),
                                      abstract_state['carry'])
  return shardings


def restore_target(abstract_state, mesh):
  """``abstract_state`` with ``state_sharding``'s shardings on ``mesh``: what orbax
  restores into, so that a checkpoint written on any device count loads on this one
  (without them orbax asks for the devices that wrote it)."""
  return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                      abstract_state, state_sharding(mesh, abstract_state))


def any_process(signal_name: str | None) -> str | None:
  """``signal_name`` (``cli.Interrupt.signal``) agreed over every process of a multi-host
  run: each must stop, save and leave the loop at the same step (orbax saves and every
  step's collectives need them all), whichever of them got the signal."""
  if jax.process_count() == 1:
    return signal_name
  got = multihost_utils.process_allgather(np.int32(signal_name is not None))
  return signal_name or ('a signal to another process' if np.any(got) else None)


def put_batch(batch, shardings):
  """Host batch -> global arrays; each process contributes its own rows of the batch."""
  out = {}
  for k, v in batch.items():
    if np.ndim(v) and jax.process_count() > 1:
      rows = len(v) // jax.process_count()
      v = v[jax.process_index() * rows:(jax.process_index() + 1) * rows]
    out[k] = jax.make_array_from_process_local_data(shardings[k], np.asarray(v))
  return out


def population_sharding(k: int):
  """A population's [K, ...] leaves: split over every device along K when K is a
  multiple of the device count, else replicated; None on one device."""
  n = jax.device_count()
  if n == 1:
    return None
  mesh = Mesh(np.array(jax.devices()), ('pop',))
  return NamedSharding(mesh, P('pop') if k % n == 0 else P())


class One:
  """How the loop holds K = 1 point (``seqlab.run``): the state, batch and metrics trees
  are the point's own, not vmapped (a resumed run is bitwise equal to an uninterrupted
  one); data-parallel over every device of every host."""

  def __init__(self):
    self.mesh = make_mesh()

  def stack(self, trees):
    (tree,) = trees
    return tree

  def take(self, tree, i):
    del i
    return tree

  def map(self, fn):
    return fn

  def put(self, tree):
    return put_batch(tree, batch_sharding(self.mesh, tree))

  def put_tree(self, tree):
    """A state-like tree (states, carries, hyperparameters), left as it was made: a state
    is created or restored with ``state_sharding``'s shardings."""
    return tree

  def abstract(self, state, batch, hparams) -> tuple:
    """The train step's arguments as shapes (``memory.check_fits``), from one point's
    abstract state and host batch."""
    return state, memory.abstract(batch, batch_sharding(self.mesh, batch)), hparams


class Stacked:
  """How the loop holds K > 1 points of one program (a vmapped sweep): every leaf
  [K, ...], the train and eval steps ``jax.vmap``-ed, the K axis over the devices
  (``population_sharding``). One host."""

  def __init__(self, k: int):
    self.k, self.sharding = k, population_sharding(k)

  def stack(self, trees):
    return jax.tree.map(lambda *xs: np.stack(xs) if isinstance(xs[0], np.ndarray)
                        else jnp.stack(xs), *trees)

  def take(self, tree, i):
    return jax.tree.map(lambda x: x[i], tree)

  def map(self, fn):
    return jax.vmap(fn)

  def put(self, tree):
    return jax.device_put(tree, self.sharding)

  def put_tree(self, tree):
    return self.put(tree)

  def abstract(self, state, batch, hparams) -> tuple:
    """The train step's arguments as shapes (``memory.check_fits``) from one point's
    abstract state and host batch, every leaf [K, ...], and the [K] ``hparams``."""
    stacked = lambda a: jax.ShapeDtypeStruct((self.k, *np.shape(a)), a.dtype,
                                             sharding=self.sharding)
    return (jax.tree.map(stacked, state), jax.tree.map(stacked, memory.abstract(batch)),
            memory.abstract(hparams, jax.tree.map(lambda _: self.sharding, hparams)))

  def describe(self, start: int) -> str:
    n = jax.device_count()
    return (f'Population of {self.k} points {"resumed" if start else "starting"} at step '
            f'{start}, ' + ('on one device' if n == 1 else
                            f'population axis split over {n} devices' if self.k % n == 0 else
                            f'replicated over {n} devices ({self.k} points do not split over '
                            'them)'))


# --- The loop ----------------------------------------------------------------------------


@dataclasses.dataclass
class Point:
  """One run in the loop: its config and workdir, and what it was built and opened with."""
  config: ml_collections.FrozenConfigDict
  workdir: str
  task: Any
  model: Any
  optimizer: Any
  ckpt: checkpoint.Checkpointer | None = None
  start: int = 0
  failed: str | None = None  # why its updates stopped being finite, once they did


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Trains ``config`` in ``workdir``, resuming there if a checkpoint exists.

  Data-parallel over every visible device. Returns the final eval metrics, or {} if
  SIGTERM/SIGINT stopped it (it trains to the next step, saves it and returns; under a
  command-line tool a signal before the first step ends the process, ``seqlab.signals``).
  Raises ``ConfigError``
  for a bad config (before any compile) and ``NonFiniteError`` naming the step where
  training diverged.
  """
  (result,) = train_points([config], [workdir])
  if isinstance(result, str):
    raise NonFiniteError(result)
  return result or {}


def train_points(configs, workdirs) -> list:
  """Trains K runs of one compiled program, each in its workdir, by one loop.

  K = 1 is ``seqlab.run``. K > 1 (``seqlab.population``: points that differ only in
  values that change neither a shape nor the program) stacks the states along a
  leading axis and vmaps the steps; each point's optimizer gets its own lr, clip_norm
  and weight_decay (``optim.TRACEABLE``) as traced arguments. Every point resumes from
  its own checkpoints; points found at different steps train as one group per step,
  one group after another.

  Returns one entry per point: its final eval metrics (dict), why its updates stopped
  being finite (str: its last good checkpoint is kept, the others go on), or None if
  SIGTERM/SIGINT stopped it (saved; run again to resume).
  """
  configs = [ml_collections.FrozenConfigDict(c) for c in configs]  # never mutated
  with cli.Interrupt() as interrupt:
    return _train_groups(configs, list(workdirs), interrupt)


def _train_groups(configs, workdirs, interrupt) -> list:
  with contextlib.ExitStack() as cleanup:
    points, states, run = _open(configs, workdirs, cleanup)
    starts = sorted({p.start for p in points})
    if len(starts) == 1:
      return _loop(points, states, run, interrupt, cleanup)
  # A save cut short, a point retried from 0: each step's group on its own. The locks
  # were released above; each group takes its own again.
  results = [None] * len(configs)
  for start in starts:
    idx = [i for i, p in enumerate(points) if p.start == start]
    sub = _train_groups([configs[i] for i in idx], [workdirs[i] for i in idx], interrupt)
    for i, r in zip(idx, sub):
      results[i] = r
    if any(r is None for r in sub):  # interrupted: start no other (theirs stay None)
      break
  return results


def _refuse_unrestorable(workdir: str, config, newest: int):
  """Raises ``WorkdirError``: checkpoints are there (newest step ``newest``) but none
  restores into ``config``. Starting over would bury them, so the run stops, naming
  the config keys changed since they were written, or else (same config: damaged,
  unreadable) saying how to start over."""
  changed = workdir_lib.config_changes(workdir, config, ignore=workdir_lib.RESUMABLE)
  if changed:
    raise workdir_lib.WorkdirError(
        f'the checkpoints in {workdir} (newest step {newest}) do not restore into this '
        f'config, changed since they were written: {workdir_lib.show_changes(changed)}. '
        'Resume with the old values, or give another --workdir for a new run.')
  raise workdir_lib.WorkdirError(
      f'no checkpoint in {workdir} restores (newest step {newest}; the warnings above say '
      'why). If they are damaged, move the checkpoints directory away to start over.')


@dataclasses.dataclass
class _Run:
  """What the points share: the program's model and spec, the train config, the axis,
  the points' traced optimizer values and the jitted train step (``_step_program``)."""
  model: Any
  spec: Any
  tc: Any
  axis: Any
  hparams: dict
  p_train: Any
  abstract: Any  # one point's state as shapes with shardings: what checkpoints restore into


def _open(configs, workdirs, cleanup: contextlib.ExitStack):
  """Builds every point, locks its workdir and restores it (or refuses its checkpoints)
  before anything is written; then writes its run files. Returns (points, host states,
  the shared ``_Run``); the checkpointers and locks are entered into ``cleanup``."""
  # --- Input, model and optimizer ----------------------------------------------------
  points = [Point(c, w, *build(c)) for c, w in zip(configs, workdirs)]
  first = points[0]
  spec, tc = first.task.spec, first.config.train
  axis = One() if len(points) == 1 else Stacked(len(points))
  eval_bs = tc.eval_batch_size or tc.batch_size
  if len(points) == 1:
    for key, size in (('batch_size', tc.batch_size), ('eval_batch_size', eval_bs)):
      if size % jax.device_count():
        raise config_lib.ConfigError(
            f'config.train.{key}={size} does not split over {jax.device_count()} devices; '
            'use a multiple of the device count')
  best_metric, best_mode = losses.best_metric(spec, tc.best_metric)
  mesh = make_mesh()
  inits = {}  # one compiled init per distinct model config: the seed is an argument
  example = tasks.longest_train_batch(first.task, tc.batch_size)  # what memory must fit
  abstract = restore_target(jax.eval_shape(functools.partial(
      create_state, first.model, first.optimizer, stateful=spec.stateful), example,
                                           np.int32(first.config.seed)), mesh)
  hparams = {} if len(points) == 1 else {
      k: np.array([p.config.optim[k] for p in points], np.float32) for k in optim.TRACEABLE}
  p_train = _step_program(first, axis, abstract)
  # Compiled from shapes before anything is allocated or written; the loop's compile of
  # the same jitted step reuses it.
  memory.check_fits(p_train, axis.abstract(abstract, example, hparams), first.config)
  states = []
  # --- Resume before anything else -----------------------------------------------------
  for p in points:
    cleanup.enter_context(workdir_lib.lock(p.workdir))  # one run at a time in a workdir
    # Entered into ``cleanup``: whatever ends the run, the saves started finish first.
    p.ckpt = cleanup.enter_context(checkpoint.Checkpointer(
        p.workdir, keep=tc.keep_checkpoints, best_metric=best_metric, best_mode=best_mode))
    p.ckpt.check_writable()
    key = json.dumps(p.config.model.to_dict(), sort_keys=True)
    if key not in inits:
      inits[key] = jax.jit(functools.partial(create_state, p.model, p.optimizer,
                                             stateful=spec.stateful),
                           out_shardings=jax.tree.map(lambda a: a.sharding, abstract))
    restored = p.ckpt.restore_latest(abstract)
    if restored is None and p.ckpt.latest_step() is not None:
      _refuse_unrestorable(p.workdir, p.config, p.ckpt.latest_step())
    states.append((inits[key], p.task.batch('train', 0, tc.batch_size), restored))
  if jax.process_count() > 1:  # every process has read config.json before it changes
    multihost_utils.sync_global_devices('seqlab: restored')
  for i, (p, (init, example, restored)) in enumerate(zip(points, states)):
    workdir_lib.prepare(p.workdir, p.config)  # after the resume: a refused run keeps its files
    if restored is None:
      states[i] = init(example, np.int32(p.config.seed))
      if len(points) == 1:
        logging.info('Starting %s from scratch in %s', p.config.task.name, p.workdir)
    else:
      states[i] = restored[0]
      if len(points) == 1:
        logging.info('Resumed from the checkpoint at step %d in %s', restored[1], p.workdir)
    p.start = int(states[i]['step'])
  return points, states, _Run(first.model, spec, tc, axis, hparams, p_train, abstract)


def _step_program(first: Point, axis, abstract):
  """The jitted train step of every point (vmapped by ``axis`` for K > 1), state
  donated: ``(states, batches, hparams) -> (states, metrics)``. Each point's optimizer
  is built inside it from the shared ``optim`` config and that point's traced
  ``hparams`` (``optim.TRACEABLE``; none for K = 1)."""
  config, spec = first.config, first.task.spec

  def step_fn(state, batch, hparams):
    optimizer = optim.make_optimizer(config.optim, config.train.steps, **hparams)
    return train_step(state, batch, model=first.model, optimizer=optimizer, spec=spec)

  shardings = jax.tree.map(lambda a: a.sharding, abstract)
  return jax.jit(axis.map(step_fn), donate_argnums=0,
                 **({'out_shardings': (shardings, None)} if isinstance(axis, One) else {}))


def _loop(points, states, run, interrupt, cleanup) -> list:
  """The loop of ``train_points`` over points that all start at the same step."""
  model, spec, tc, axis = run.model, run.spec, run.tc, run.axis
  k, start, workdirs = len(points), points[0].start, [p.workdir for p in points]
  eval_bs = tc.eval_batch_size or tc.batch_size
  best_metric, _ = losses.best_metric(spec, tc.best_metric)
  schedules = [optim.make_schedule(p.config.optim, tc.steps) for p in points]
  writers = [cleanup.enter_context(contextlib.closing(
      workdir_lib.MetricWriter(w, resume_step=start))) for w in workdirs]
  if k > 1:
    logging.info('%s', axis.describe(start))

  # --- Update and eval steps --------------------------------------------------------
  states = axis.put_tree(axis.stack(states))
  p_eval = jax.jit(axis.map(functools.partial(eval_step, model=model, spec=spec)))
  eval_carry = (axis.put_tree(axis.stack([model.initial_carry(eval_bs)] * k))
                if spec.stateful else None)
  hparams = axis.put_tree(run.hparams)
  batch_at = lambda split, i, size: axis.stack([p.task.batch(split, i, size) for p in points])
  compiled = {}  # batch shapes -> the train step compiled for them: one per length bucket

  def step_for(batch):
    """(the train step compiled for ``batch``'s shapes, the seconds compiling it took
    now: 0 when it already was; kept out of step time)."""
    key = _shapes(batch)
    if key in compiled:
      return compiled[key], 0.0
    t0 = time.perf_counter()
    compiled[key] = run.p_train.lower(states, batch, hparams).compile()
    seconds = time.perf_counter() - t0
    logging.info('Compiled the %s step for inputs %s in %.1f s on %d device(s)',
                 'train' if k == 1 else 'population', batch['inputs'].shape, seconds,
                 jax.device_count())
    return compiled[key], seconds

  step_for(axis.put(batch_at('train', start, tc.batch_size)))  # before the first step

  def check_finite(states) -> list[int]:
    """The points still training; a point whose update was not finite stops here."""
    bad = np.atleast_1d(np.asarray(jax.device_get(states['bad_step'])))
    for p, b in zip(points, bad):
      if b > 0 and p.failed is None:
        p.ckpt.wait()  # the step named below is on disk, not being written
        last = p.ckpt.latest_step()
        p.failed = (f'loss, gradient or new weights are not finite at step {b}; the last good '
                    f'checkpoint ({"none" if last is None else f"step {last}"}) in {p.workdir} '
                    'is kept. Lower optim.lr, set optim.clip_norm, or check the data.')
        if k > 1:
          logging.warning('point %s stopped: %s', p.workdir, p.failed)
    return [i for i, p in enumerate(points) if p.failed is None]

  def run_eval(states, step, which) -> list[dict]:
    """Every point's held-out metrics; logged (and ranked for ``best/``) for ``which``."""
    metrics = evaluate_points(p_eval, model, states['params'], [p.task for p in points],
                              eval_bs, eval_carry, axis)
    for i in which:
      writers[i].write(step, 'eval', metrics[i])
      progress.eval(step, metrics[i], point=os.path.basename(workdirs[i]) if k > 1 else '')
      points[i].ckpt.save_best(step, axis.take(states, i), {best_metric: metrics[i][best_metric]})
    return metrics

  # --- The loop -----------------------------------------------------------------------
  interrupt.training_started()  # a signal now saves the next step (before: a prompt exit)
  progress = workdir_lib.Progress(tc.steps, start)
  pending, t_log, eval_metrics, stop = [], time.perf_counter(), None, None
  active, tokens = list(range(k)), 0
  for step in range(start + 1, tc.steps + 1):
    host = batch_at('train', step - 1, tc.batch_size)
    tokens += int(np.prod(axis.take(host, 0)['inputs'].shape[:2]))  # scanned, padding too
    batch = axis.put(host)
    p_train, seconds = step_for(batch)
    t_log += seconds
    states, metrics = p_train(states, batch, hparams)
    pending.append(metrics)
    stop = any_process(interrupt.signal)  # read once: it may arrive at any moment
    if step % tc.log_every == 0 or step == tc.steps:
      active = check_finite(states)
      window = jax.device_get(pending)
      elapsed = time.perf_counter() - t_log
      rows = {i: window_metrics([axis.take(r, i) for r in window]) for i in active}
      for i, row in rows.items():
        row.update(learning_rate=float(schedules[i](step - 1)), step_time=elapsed / len(window),
                   tokens_per_sec=tokens / elapsed)
        writers[i].write(step, 'train', row)
      if rows:
        progress.update(step, float(np.median([r['loss'] for r in rows.values()])))
      pending, t_log, tokens = [], time.perf_counter(), 0
    if (step % tc.eval_every == 0 or step == tc.steps) and (active := check_finite(states)):
      eval_metrics = run_eval(states, step, active)
      t_log = time.perf_counter()  # evaluation time is not step time
    if step % tc.checkpoint_every == 0 or step == tc.steps or stop:
      active = check_finite(states)
      for i in active:
        points[i].ckpt.save(step, axis.take(states, i), force=stop is not None)
    if not active:
      break
    if stop:
      for p in points:
        p.ckpt.wait()
      print(f'{stop}: saved ' + (f'the checkpoint at step {step} in '
                                 f'{os.path.join(workdirs[0], "checkpoints")}'
                                 if k == 1 else f'every point at step {step}')
            + '; run the same command to resume.', flush=True)
      break
  progress.close()

  # --- Final eval and report -----------------------------------------------------------
  finished = int(np.max(jax.device_get(states['step']))) >= tc.steps
  active = check_finite(states)
  if finished and eval_metrics is None and active:  # resumed at the end: a rerun
    logged = [logged_eval(workdirs[i], tc.steps) for i in range(k)]
    missing = [i for i in active if logged[i] is None]
    eval_metrics = run_eval(states, tc.steps, missing) if missing else logged
    eval_metrics = [logged[i] or eval_metrics[i] for i in range(k)]
  if finished and active:
    untested = [i for i in active if len(workdir_lib.logged_test(workdirs[i], tc.steps)) < 2]
    if untested:
      final_test(points, states, run, p_eval, eval_carry, untested, writers)
  for p, writer in zip(points, writers):
    p.ckpt.wait()
    p.ckpt.close()
    writer.close()
  if jax.process_index() == 0:
    for p in points:
      plot_learning_curves(p.workdir, best_metric)
  # An interrupted run returns None even after a periodic eval, so that callers
  # (reproduce, sweeps) do not take it for finished.
  return [p.failed or (eval_metrics[i] if finished else None) for i, p in enumerate(points)]


def _shapes(batch) -> tuple:
  """(key, shape) of every array of ``batch``: what a compiled step is specific to."""
  return tuple((key, tuple(np.shape(v))) for key, v in sorted(batch.items()))


def final_test(points, states, run, eval_fn, carry, which, writers) -> None:
  """The one look at the test split: for each point in ``which``, its metrics on 'test'
  for the last weights (``states``) and for its best-on-validation checkpoint (``best/``;
  the latest when it has none), logged as rows of split 'test' at the final step with
  'checkpoint' ('last' or 'best') and 'checkpoint_step' (the weights' step). Selection
  (``best/``, ``best_metric``, sweep ranking) has read the 'eval' rows alone by then."""
  axis, tc = run.axis, run.tc
  eval_bs = tc.eval_batch_size or tc.batch_size
  tasks_ = [p.task for p in points]
  last_step = jax.device_get(states['step'])
  best = []
  for i, p in enumerate(points):
    p.ckpt.wait()  # best/ of the final eval is on disk
    best.append(p.ckpt.restore_best(run.abstract) if i in which else None)
  best = [b or (axis.take(states, i), None) for i, b in enumerate(best)]  # fillers: untested
  best_params = axis.put_tree(axis.stack([b[0]['params'] for b in best]))
  for name, params in (('last', states['params']), ('best', best_params)):
    metrics = evaluate_points(eval_fn, run.model, params, tasks_, eval_bs, carry, axis, 'test')
    for i in which:
      step = int(np.atleast_1d(last_step)[i]) if name == 'last' else int(best[i][1])
      writers[i].write(tc.steps, 'test', dict(metrics[i], checkpoint=name,
                                              checkpoint_step=step))


def split_metrics(eval_fn, params, tasks_, batch_size: int, carry, axis,
                  split: str = 'eval') -> list[dict]:
  """Each point's aggregated metrics over its task's whole held-out ``split`` ('eval',
  the validation split, or 'test'), read in order, the batches of every point stacked
  by ``axis`` (``One`` or ``Stacked``). ``carry`` (stateful tasks) is the zero carry
  the eval streams start from."""
  results = [[] for _ in tasks_]
  for b in range(tasks_[0].num_eval_batches(batch_size, split)):
    batch = axis.stack([t.batch(split, b, batch_size) for t in tasks_])
    metrics, carry = eval_fn(params, axis.put(batch), carry)
    metrics = jax.device_get(metrics)
    for i, rows in enumerate(results):
      rows.append(axis.take(metrics, i))
  return [losses.aggregate(rows, [float(r['count']) for r in rows]) for rows in results]


def evaluate_points(eval_fn, model, params, tasks_, batch_size: int, carry, axis,
                    split: str = 'eval', **decode_options) -> list[dict]:
  """``split_metrics``, and for a model that decodes each point's ``decode_*`` metrics
  (``models.decoded_metrics``, greedy unless ``decode_options`` say otherwise): the one
  evaluation of training, populations and ``seqlab.evaluate``."""
  out = split_metrics(eval_fn, params, tasks_, batch_size, carry, axis, split)
  for i, (task, row) in enumerate(zip(tasks_, out)):
    row.update(models.decoded_metrics(model, axis.take(params, i), task, batch_size,
                                      split=split, **decode_options))
  return out


def logged_eval(workdir: str, step: int) -> dict | None:
  """The eval metrics logged at ``step`` (a finished run's final eval), if any: a rerun
  of a finished run reports them rather than evaluating again and logging a duplicate."""
  rows = [r for r in workdir_lib.read_metrics(workdir) if r['split'] == 'eval' and r['step'] == step]
  if not rows:
    return None
  logging.info('%s finished at step %d; its final eval is read from metrics.jsonl', workdir, step)
  return {k: v for k, v in rows[-1].items() if k not in ('step', 'split')}


def plot_learning_curves(workdir: str, metric: str) -> None:
  """learning_curves.png in the workdir, when matplotlib is installed (the plots extra)."""
  try:
    from seqlab import plots  # pylint: disable=g-import-not-at-top
    plots.plot_run(workdir, metric)
  except ImportError:
    logging.info('matplotlib is not installed: no learning_curves.png (pip install '
                 "'seqlab[plots]')")
  except OSError as e:  # a full disk at the end: the run itself is saved
    logging.warning('could not write %s (%s); the checkpoints and metrics are kept. Free '
                    'disk space and run the same command again to draw it.',
                    os.path.join(workdir, 'learning_curves.png'), e.strerror or e)


def load_run(workdir: str, which: str = 'best'):
  """A finished or running workdir -> (config, task, model, state, step).

  ``which`` is 'best' (the best-by-metric checkpoint, else the latest) or 'latest'.
  """
  path = os.path.join(workdir, 'config.json')
  if not os.path.exists(path):
    raise FileNotFoundError(f'{workdir} holds no run (no config.json); pass the --workdir '
                            'of a python -m seqlab.run')
  with open(path) as f:
    config = ml_collections.ConfigDict(config_lib.upgrade(json.load(f)))
  task, model, optimizer = build(config)
  example = task.batch('train', 0, config.train.batch_size)
  abstract = restore_target(jax.eval_shape(functools.partial(
      create_state, model, optimizer, seed=config.seed, stateful=task.spec.stateful), example),
                            make_mesh())
  metric, mode = losses.best_metric(task.spec, config.train.best_metric)
  ckpt = checkpoint.Checkpointer(workdir, keep=config.train.keep_checkpoints,
                                 best_metric=metric, best_mode=mode, read_only=True)
  restored = ckpt.restore_best(abstract) if which == 'best' else ckpt.restore_latest(abstract)
  ckpt.close()
  if restored is None:
    raise FileNotFoundError(f'no restorable checkpoint in {workdir}')
  state, step = restored
  return config, task, model, state, step

"""Training: create_state, train_step, eval_step (pure), and the loop (a function).

The state is a plain pytree ``{'step', 'params', 'opt_state', 'rng', 'bad_step'}``.
Data order is a pure function of (seed, step), so restoring ``step`` restores the
data position, and a run resumed from any checkpoint ends bitwise equal to an
uninterrupted one.
"""
import functools
import json
import os
import signal
import time

from absl import logging
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from seqlab import checkpoint
from seqlab import config as config_lib
from seqlab import losses
from seqlab import models
from seqlab import optim
from seqlab import tasks
from seqlab import workdir as workdir_lib


class NonFiniteError(RuntimeError):
  """The loss or the gradient stopped being finite."""


def build(config):
  """Validated config -> (task, model, optimizer); fails before any compile."""
  config_lib.validate(config)
  try:
    task = tasks.make_task(config.task, config.seed)
    model = models.build_model(config.model, task.spec)
    optimizer = optim.make_optimizer(config.optim, config.train.steps)
  except (ValueError, FileNotFoundError) as e:
    raise config_lib.ConfigError(str(e)) from None
  return task, model, optimizer


TARGET_KEYS = ('targets', 'target_mask')


def model_inputs(batch) -> dict:
  """The batch entries a model takes as keyword arguments (all but the targets)."""
  return {k: v for k, v in batch.items() if k not in TARGET_KEYS}


def create_state(model, optimizer, batch, seed: int):
  """Initial train state from a (shape-only is enough) example batch."""
  init_rng, dropout_rng = jax.random.split(jax.random.key(seed))
  params = model.init(init_rng, **model_inputs(batch))
  return {
      'step': jnp.zeros((), jnp.int32),
      'params': params,
      'opt_state': optimizer.init(params),
      'rng': jax.random.key_data(dropout_rng),
      'bad_step': jnp.full((), -1, jnp.int32),  # first step whose loss/grad was not finite
  }


def train_step(state, batch, *, model, optimizer, spec):
  """One update. Pure: (state, batch) -> (state, metrics).

  A step whose loss or gradient is not finite changes nothing but ``bad_step``,
  so the state stays the last good one and the loop can stop naming the step.
  """
  rng = jax.random.fold_in(jax.random.wrap_key_data(state['rng']), state['step'])

  def loss_fn(params):
    outputs, _ = model.apply(params, **model_inputs(batch), deterministic=False,
                             rngs={'dropout': rng})
    return losses.loss_and_metrics(spec, outputs, batch)

  (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state['params'])
  grad_norm = optax.global_norm(grads)
  updates, opt_state = optimizer.update(grads, state['opt_state'], state['params'])
  params = optax.apply_updates(state['params'], updates)
  ok = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
  keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(ok, n, o), new, old)
  new_state = {
      'step': state['step'] + 1,
      'params': keep(params, state['params']),
      'opt_state': keep(opt_state, state['opt_state']),
      'rng': state['rng'],
      'bad_step': jnp.where((state['bad_step'] < 0) & ~ok, state['step'], state['bad_step']),
  }
  metrics = dict(metrics, grad_norm=grad_norm)
  return new_state, metrics


def eval_step(params, batch, *, model, spec):
  """Metrics of one held-out batch (dropout off)."""
  outputs, _ = model.apply(params, **model_inputs(batch), deterministic=True)
  return losses.loss_and_metrics(spec, outputs, batch)[1]


def evaluate(eval_fn, params, task, batch_size: int) -> dict:
  """Aggregated metrics over the task's whole held-out split."""
  results = []
  for i in range(task.num_eval_batches(batch_size)):
    results.append(jax.device_get(eval_fn(params, task.batch('eval', i, batch_size))))
  return losses.aggregate(results, [float(r['count']) for r in results])


class _Interrupt:
  """Turns SIGTERM/SIGINT into a flag the loop checks after each step."""

  def __init__(self):
    self.signal = None

  def __enter__(self):
    self._old = {}
    for sig in (signal.SIGTERM, signal.SIGINT):
      try:
        self._old[sig] = signal.signal(sig, self._handle)
      except ValueError:  # not the main thread: no handler, no interruption
        pass
    return self

  def _handle(self, signum, frame):
    del frame
    self.signal = signal.Signals(signum).name

  def __exit__(self, *exc):
    for sig, old in self._old.items():
      signal.signal(sig, old)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Trains ``config`` in ``workdir``, resuming there if a checkpoint exists.

  Returns the final eval metrics. Raises ``ConfigError`` for a bad config (before
  any compile) and ``NonFiniteError`` naming the step where training diverged.
  """
  config = ml_collections.FrozenConfigDict(config)  # never mutated from here on
  # --- Input, model and optimizer -----------------------------------------------
  task, model, optimizer = build(config)
  spec, tc = task.spec, config.train
  eval_bs = tc.eval_batch_size or tc.batch_size
  best_metric = tc.best_metric or spec.metric
  workdir_lib.prepare(workdir, config)
  schedule = optim.make_schedule(config.optim, tc.steps)

  example = task.batch('train', 0, tc.batch_size)
  abstract = jax.eval_shape(functools.partial(create_state, model, optimizer, seed=config.seed),
                            example)
  # --- Resume before anything else ------------------------------------------------
  ckpt = checkpoint.Checkpointer(workdir, keep=tc.keep_checkpoints, best_metric=best_metric,
                                 best_mode=spec.metric_mode)
  restored = ckpt.restore_latest(abstract)
  if restored is None:
    state = create_state(model, optimizer, example, config.seed)
    logging.info('Starting %s from scratch in %s', config.task.name, workdir)
  else:
    state, step = restored
    logging.info('Resumed from the checkpoint at step %d in %s', step, workdir)
  start = int(state['step'])
  writer = workdir_lib.MetricWriter(workdir, resume_step=start)

  # --- Update and eval steps --------------------------------------------------------
  p_train = jax.jit(functools.partial(train_step, model=model, optimizer=optimizer, spec=spec),
                    donate_argnums=0)
  p_eval = jax.jit(functools.partial(eval_step, model=model, spec=spec))
  tokens_per_step = int(np.prod(example['inputs'].shape[:2]))
  t0 = time.perf_counter()
  p_train = p_train.lower(state, example).compile()  # compile time apart from step time
  logging.info('Compiled the train step in %.1f s', time.perf_counter() - t0)

  def check_finite(state):
    bad = int(state['bad_step'])
    if bad >= 0:
      last = ckpt.latest_step()
      raise NonFiniteError(
          f'loss or gradient is not finite at step {bad}; the last good checkpoint '
          f'({"none" if last is None else f"step {last}"}) in {workdir} is kept. Lower '
          'optim.lr, set optim.clip_norm, or check the data.')

  def run_eval(state, step):
    metrics = evaluate(p_eval, state['params'], task, eval_bs)
    writer.write(step, 'eval', metrics)
    ckpt.save_best(step, state, {best_metric: metrics[best_metric]})
    return metrics

  # --- The loop -----------------------------------------------------------------------
  progress = workdir_lib.Progress(tc.steps, start)
  pending, t_log, eval_metrics = [], time.perf_counter(), None
  with _Interrupt() as interrupt:
    for step in range(start + 1, tc.steps + 1):
      batch = task.batch('train', step - 1, tc.batch_size)
      state, metrics = p_train(state, batch)
      pending.append(metrics)
      if step % tc.log_every == 0 or step == tc.steps:
        check_finite(state)
        rows = jax.device_get(pending)
        elapsed = time.perf_counter() - t_log
        row = {k: float(np.mean([r[k] for r in rows])) for k in rows[0]}
        row.update(learning_rate=float(schedule(step - 1)), step_time=elapsed / len(rows),
                   tokens_per_sec=tokens_per_step * len(rows) / elapsed)
        writer.write(step, 'train', row)
        progress.update(step, row['loss'])
        pending, t_log = [], time.perf_counter()
      if step % tc.eval_every == 0 or step == tc.steps:
        check_finite(state)
        eval_metrics = run_eval(state, step)
        t_log = time.perf_counter()  # evaluation time is not step time
      if step % tc.checkpoint_every == 0 or step == tc.steps:
        check_finite(state)
        ckpt.save(step, state)
      if interrupt.signal:
        check_finite(state)
        ckpt.save(step, state, force=True)
        ckpt.wait()
        print(f'{interrupt.signal}: saved the checkpoint at step {step} in '
              f'{os.path.join(workdir, "checkpoints")}; run the same command to resume.',
              flush=True)
        break
  progress.close()
  if eval_metrics is None and int(state['step']) >= tc.steps:
    eval_metrics = run_eval(state, int(state['step']))  # resumed at the end: evaluate again
  ckpt.wait()
  ckpt.close()
  writer.close()
  return eval_metrics or {}

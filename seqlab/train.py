"""Training: create_state, train_step, eval_step (pure), and the loop (a function).

The state is a plain pytree ``{'step', 'params', 'opt_state', 'rng', 'bad_step'}``.
Data order is a pure function of (seed, step), so restoring ``step`` restores the
data position, and a run resumed from any checkpoint ends bitwise equal to an
uninterrupted one.
"""
import contextlib
import functools
import json
import os
import time

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
from seqlab import models
from seqlab import optim
from seqlab import tasks
from seqlab import workdir as workdir_lib


class NonFiniteError(RuntimeError):
  """The loss, the gradient or the new weights stopped being finite."""


def build(config):
  """Validated config -> (task, model, optimizer); fails before any compile."""
  config_lib.validate(config)
  try:
    task = tasks.make_task(config.task, config.seed)
    losses.best_metric(task.spec, config.train.best_metric)
    model = models.build_model(config.model, task.spec, config.get('seq2seq'))
    optimizer = optim.make_optimizer(config.optim, config.train.steps)
    # Data too small for a batch fails here, not after training.
    task.batch('train', 0, config.train.batch_size)
    task.batch('eval', 0, config.train.eval_batch_size or config.train.batch_size)
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
    state['carry'] = model.encoder.initial_carry(batch['inputs'].shape[0])
  return state


def window_metrics(rows: list[dict]) -> dict[str, float]:
  """One train log row from the metrics of the steps since the last: the loss and the
  task's metrics weighted by each step's 'count' (the window's metrics as if one batch;
  'bpc' and 'perplexity' from its cross-entropy, 'count' summed), 'grad_norm' the mean
  over steps."""
  counts = [float(r['count']) for r in rows]
  steps = [{k: v for k, v in r.items() if k != 'grad_norm'} for r in rows]
  row = losses.aggregate(steps, counts if sum(counts) > 0 else [1.0] * len(rows))
  row['grad_norm'] = float(np.mean([r['grad_norm'] for r in rows]))
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
    outputs, aux = apply_model(model, params, batch, carry, deterministic=False,
                               rngs={'dropout': rng})
    loss, metrics = losses.loss_and_metrics(spec, outputs, batch)
    return loss, (metrics, aux)

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


def evaluate(eval_fn, params, task, batch_size: int, carry=None, put=lambda b: b) -> dict:
  """Aggregated metrics over the task's whole held-out split, read in order.

  ``carry`` (stateful tasks) is the zero carry the eval streams start from.
  """
  results = []
  for i in range(task.num_eval_batches(batch_size)):
    metrics, carry = eval_fn(params, put(task.batch('eval', i, batch_size)), carry)
    results.append(jax.device_get(metrics))
  return losses.aggregate(results, [float(r['count']) for r in results])


def evaluate_all(eval_fn, model, params, task, batch_size: int, carry=None,
                 put=lambda b: b) -> dict:
  """``evaluate``, and for seq2seq tasks the decoded metrics of the split as well.

  Seq2seq runs add ``decode_exact_match``, ``decode_token_error_rate`` (the G2P phoneme
  error rate), ``decode_sequence_error_rate`` (word error rate) and
  ``decode_token_accuracy`` from greedy decoding (``seqlab.seq2seq_metrics``).
  """
  metrics = evaluate(eval_fn, params, task, batch_size, carry, put)
  metrics.update(decoded_metrics(model, params, task, batch_size))
  return metrics


def decoded_metrics(model, params, task, batch_size: int) -> dict:
  """The ``decode_*`` metrics of greedy decoding of a seq2seq task's eval split; {} for
  other tasks."""
  if task.spec.model != 'seq2seq':
    return {}
  from seqlab import seq2seq_metrics  # pylint: disable=g-import-not-at-top
  decoded = seq2seq_metrics.seq2seq_eval(model, params, task, batch_size)
  return {f'decode_{k}': v for k, v in decoded.items() if k != 'count'}


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


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Trains ``config`` in ``workdir``, resuming there if a checkpoint exists.

  Data-parallel over every visible device. Returns the final eval metrics, or {} if
  SIGTERM/SIGINT stopped it (at any point before the end: setting up, compiling or
  training, it trains to the next step, saves it and returns). Raises ``ConfigError``
  for a bad config (before any compile) and ``NonFiniteError`` naming the step where
  training diverged.
  """
  with cli.Interrupt() as interrupt, contextlib.ExitStack() as cleanup:
    return _train_and_evaluate(config, workdir, interrupt, cleanup)


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


def _train_and_evaluate(config, workdir: str, interrupt: cli.Interrupt,
                        cleanup: contextlib.ExitStack) -> dict:
  config = ml_collections.FrozenConfigDict(config)  # never mutated from here on
  # --- Input, model and optimizer -----------------------------------------------
  task, model, optimizer = build(config)
  spec, tc = task.spec, config.train
  eval_bs = tc.eval_batch_size or tc.batch_size
  best_metric, best_mode = losses.best_metric(spec, tc.best_metric)
  mesh = make_mesh()
  for key, size in (('batch_size', tc.batch_size), ('eval_batch_size', eval_bs)):
    if size % jax.device_count():
      raise config_lib.ConfigError(
          f'config.train.{key}={size} does not split over {jax.device_count()} devices; '
          'use a multiple of the device count')
  cleanup.enter_context(workdir_lib.lock(workdir))  # one run at a time in a workdir
  schedule = optim.make_schedule(config.optim, tc.steps)

  example = task.batch('train', 0, tc.batch_size)
  put = functools.partial(put_batch, shardings=batch_sharding(mesh, example))
  init = functools.partial(create_state, model, optimizer, seed=config.seed,
                           stateful=spec.stateful)
  abstract = restore_target(jax.eval_shape(init, example), mesh)
  shardings = jax.tree.map(lambda a: a.sharding, abstract)
  # --- Resume before anything else ------------------------------------------------
  # Entered into ``cleanup``: whatever ends the run, the saves started finish first.
  ckpt = cleanup.enter_context(checkpoint.Checkpointer(
      workdir, keep=tc.keep_checkpoints, best_metric=best_metric, best_mode=best_mode))
  ckpt.check_writable()
  restored = ckpt.restore_latest(abstract)
  if restored is None and ckpt.latest_step() is not None:
    _refuse_unrestorable(workdir, config, ckpt.latest_step())
  if jax.process_count() > 1:  # every process has read config.json before it changes
    multihost_utils.sync_global_devices('seqlab: restored')
  workdir_lib.prepare(workdir, config)  # after the resume: a refused run keeps its files
  if restored is None:
    state = jax.jit(init, out_shardings=shardings)(example)
    logging.info('Starting %s from scratch in %s', config.task.name, workdir)
  else:
    state, step = restored
    logging.info('Resumed from the checkpoint at step %d in %s', step, workdir)
  start = int(state['step'])
  writer = workdir_lib.MetricWriter(workdir, resume_step=start)
  cleanup.callback(writer.close)  # also on an exception

  # --- Update and eval steps --------------------------------------------------------
  p_train = jax.jit(functools.partial(train_step, model=model, optimizer=optimizer, spec=spec),
                    donate_argnums=0, out_shardings=(shardings, None))
  p_eval = jax.jit(functools.partial(eval_step, model=model, spec=spec))
  eval_carry = (model.encoder.initial_carry(eval_bs) if spec.stateful else None)
  tokens_per_step = int(np.prod(example['inputs'].shape[:2]))
  t0 = time.perf_counter()
  p_train = p_train.lower(state, put(example)).compile()  # compile time apart from step time
  logging.info('Compiled the train step in %.1f s on %d device(s)', time.perf_counter() - t0,
               jax.device_count())

  def check_finite(state):
    bad = int(state['bad_step'])
    if bad > 0:
      ckpt.wait()  # the step named below is on disk, not being written
      last = ckpt.latest_step()
      raise NonFiniteError(
          f'loss, gradient or new weights are not finite at step {bad}; the last good checkpoint '
          f'({"none" if last is None else f"step {last}"}) in {workdir} is kept. Lower '
          'optim.lr, set optim.clip_norm, or check the data.')

  def run_eval(state, step):
    eval_put = functools.partial(put_batch, shardings=batch_sharding(
        mesh, task.batch('eval', 0, eval_bs)))
    metrics = evaluate_all(p_eval, model, state['params'], task, eval_bs, eval_carry, eval_put)
    writer.write(step, 'eval', metrics)
    ckpt.save_best(step, state, {best_metric: metrics[best_metric]})
    return metrics

  # --- The loop -----------------------------------------------------------------------
  progress = workdir_lib.Progress(tc.steps, start)
  pending, t_log, eval_metrics = [], time.perf_counter(), None
  for step in range(start + 1, tc.steps + 1):
    state, metrics = p_train(state, put(task.batch('train', step - 1, tc.batch_size)))
    pending.append(metrics)
    stop = any_process(interrupt.signal)  # read once: it may arrive at any moment
    if step % tc.log_every == 0 or step == tc.steps:
      check_finite(state)
      rows = jax.device_get(pending)
      elapsed = time.perf_counter() - t_log
      row = window_metrics(rows)
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
    if stop:
      check_finite(state)
      ckpt.save(step, state, force=True)
      ckpt.wait()
      print(f'{stop}: saved the checkpoint at step {step} in '
            f'{os.path.join(workdir, "checkpoints")}; run the same command to resume.',
            flush=True)
      break
  progress.close()
  finished = int(state['step']) >= tc.steps
  if eval_metrics is None and finished:  # resumed at the end (a rerun of a finished run)
    eval_metrics = logged_eval(workdir, int(state['step'])) or run_eval(state, int(state['step']))
  ckpt.wait()
  ckpt.close()
  writer.close()
  if jax.process_index() == 0:
    plot_learning_curves(workdir, best_metric)
  # An interrupted run returns {} even after a periodic eval, so that callers (reproduce,
  # sweeps) do not take it for finished.
  return (eval_metrics or {}) if finished else {}


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

"""Whether a training step fits in the devices' memory, decided before anything is allocated.

XLA's memory analysis of the step compiled from abstract shapes (``jax.ShapeDtypeStruct``
leaves from ``jax.eval_shape``) gives, per device, the bytes of its arguments (the train
state and the batch), of its outputs not written over its donated arguments, and of its
temporaries (the activations kept for the backward pass, the gradients, the optimizer's
updates). Compiling allocates nothing, and jax keeps the executable, so the training
loop's own compile of the same jitted step with arrays of those shapes costs nothing more.
"""
import os

import jax
import numpy as np

from seqlab import config as config_lib


def step_bytes(compiled) -> int:
  """Peak bytes of one call of ``compiled`` (a ``jax.stages.Compiled``) on one device:
  arguments + outputs - outputs aliased to (donated) arguments + temporaries. Where
  XLA gives no analysis, the arguments alone (a lower bound)."""
  m = compiled.memory_analysis()
  if m is None:
    return sum(int(np.prod(a.shape)) * a.dtype.itemsize
               for a in jax.tree.leaves(compiled.args_info) if hasattr(a, 'shape'))
  return (m.argument_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes
          + m.temp_size_in_bytes)


def _ram_available() -> int:
  """Physical RAM this process may still take: /proc/meminfo's MemAvailable (page cache
  counts as free), within the cgroup's limit (a container) where there is one."""
  available = os.sysconf('SC_AVPHYS_PAGES') * os.sysconf('SC_PAGE_SIZE')
  try:
    with open('/proc/meminfo') as f:
      fields = dict(line.split(':', 1) for line in f)
    available = int(fields['MemAvailable'].split()[0]) * 1024
  except (OSError, KeyError, ValueError):
    pass
  try:
    with open('/sys/fs/cgroup/memory.max') as f, open('/sys/fs/cgroup/memory.current') as g:
      limit = f.read().strip()
      if limit != 'max':
        available = min(available, int(limit) - int(g.read()))
  except (OSError, ValueError):
    pass
  return available


def available_bytes(devices) -> tuple[int, str]:
  """(bytes one device may still allocate, where that figure comes from) over
  ``devices`` (this process's): the smallest free allocator space of the accelerators
  (``memory_stats()``: bytes_limit - bytes_in_use), or for CPU devices, which share
  the host's memory, the available RAM divided among them."""
  stats = [d.memory_stats() for d in devices]
  if all(s and 'bytes_limit' in s for s in stats):
    free = min(s['bytes_limit'] - s.get('bytes_in_use', 0) for s in stats)
    return free, f'free on each {devices[0].device_kind}'
  return _ram_available() // len(devices), (
      'of RAM available' + (f' to each of {len(devices)} CPU devices' if len(devices) > 1 else ''))


def _gb(n: int) -> str:
  """Bytes as '1.92 TB', '20.5 GB', '340 MB'."""
  for unit, size in (('TB', 1e12), ('GB', 1e9)):
    if n >= size:
      return f'{n / size:.3g} {unit}'
  return f'{n / 1e6:.3g} MB'


def length_keys(config) -> list[str]:
  """The task's keys that set a sequence length (task.length, task.seq_len, ...)."""
  return [f'task.{k}' for k in sorted(config.task) if 'len' in k]


def abstract(tree, shardings=None):
  """``tree``'s leaves (host arrays) as ``jax.ShapeDtypeStruct``, with ``shardings``
  (a matching tree) where given: what ``check_fits`` compiles for."""
  if shardings is None:
    return jax.tree.map(lambda v: jax.ShapeDtypeStruct(np.shape(v), np.asarray(v).dtype), tree)
  return jax.tree.map(lambda v, s: jax.ShapeDtypeStruct(np.shape(v), np.asarray(v).dtype,
                                                        sharding=s), tree, shardings)


def check_fits(step, args, config) -> None:
  """Raises ``ConfigError`` when one call of ``step`` needs more memory than a device has.

  Args:
    step: the jitted train step the loop will call (the same object, so that its
      compile reuses this one).
    args: its arguments as ``jax.ShapeDtypeStruct`` pytrees (``jax.eval_shape``,
      ``abstract``), with the shardings the loop gives them; the first is the state.
    config: the run's config, whose keys the message names.
  """
  need = step_bytes(step.lower(*args).compile())
  have, where = available_bytes(jax.local_devices())
  if need <= have:
    return
  state = sum(int(np.prod(a.shape)) * a.dtype.itemsize for a in jax.tree.leaves(args[0]))
  keys = [f'model.hidden_size={config.model.hidden_size}',
          f'train.batch_size={config.train.batch_size}']
  keys += [f'{k}={config.task[k.split(".", 1)[1]]}' for k in length_keys(config)] or [
      "the task's sequence length"]
  raise config_lib.ConfigError(
      f'the train step needs about {_gb(need)} of memory per device (parameters and '
      f'optimizer state {_gb(state)}; activations, gradients and the batch the rest), more '
      f'than the {_gb(have)} {where}; lower {", ".join(keys[:-1])} or {keys[-1]}')


def out_of_memory(error: BaseException) -> str | None:
  """One line for an allocation that failed (``MemoryError``, XLA's RESOURCE_EXHAUSTED)
  anywhere in a run, naming the keys to lower; None for any other error."""
  text = str(error).strip()
  if not (isinstance(error, MemoryError) or (isinstance(error, jax.errors.JaxRuntimeError)
                                             and 'RESOURCE_EXHAUSTED' in text)):
    return None
  cause = (text.splitlines() or [type(error).__name__])[0][:300]
  return (f'out of memory ({cause}); lower model.hidden_size, train.batch_size or the '
          "task's sequence length (the checkpoints written before are kept)")

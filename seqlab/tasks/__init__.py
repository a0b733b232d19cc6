"""Tasks: deterministic batches from (seed, split, step); see ``base`` for the interface.

A new task is one module with a ``from_config(task_cfg, seed) -> Task`` and one line
in ``TASKS``.
"""
import numpy as np

from seqlab.tasks import adding
from seqlab.tasks import arrays
from seqlab.tasks import audio
from seqlab.tasks import base
from seqlab.tasks import charlm
from seqlab.tasks import copy
from seqlab.tasks import forecast
from seqlab.tasks import g2p
from seqlab.tasks import mnist1d
from seqlab.tasks import music
from seqlab.tasks import reverse
from seqlab.tasks import sentiment
from seqlab.tasks import uea
from seqlab.tasks.base import Spec, Task

TASKS = {
    'adding': adding.from_config,
    'copy': copy.from_config,
    'charlm': charlm.from_config,
    'mnist1d': mnist1d.from_config,
    'uea': uea.from_config,
    'forecast': forecast.from_config,
    'sentiment': sentiment.from_config,
    'reverse': reverse.from_config,
    'g2p': g2p.from_config,
    'music': music.from_config,
    'audio': audio.from_config,
}


def make_task(task_cfg, seed: int) -> Task:
  """The task named ``task_cfg.name``, built from its other keys (never written).

  Raises ValueError for an unknown name (listing the choices), an unknown key, or a
  bad value (naming the key).
  """
  name = task_cfg['name'] if 'name' in task_cfg else None
  if name not in TASKS:
    raise ValueError(f'task.name={name!r} is not a known task; choose one of: '
                     f'{", ".join(TASKS)}')
  return TASKS[name](task_cfg, seed)


def length_buckets(task: Task, n: int) -> Task:
  """``task`` with its train batches drawn from ``n`` length buckets
  (``train.length_buckets``; ``arrays.Bucketed``), or ``task`` itself when ``n`` is 0.

  Needs a fixed data set of variable-length sequences (``arrays.Splits`` whose train
  examples have lengths: uea, sentiment, music, audio); raises ValueError naming the key
  otherwise.
  """
  if n == 0:
    return task
  splits = getattr(task, 'splits', None)
  if (not isinstance(splits, arrays.Splits) or splits.train.lengths is None
      or task.spec.stateful):
    raise ValueError(f'train.length_buckets={n} needs a fixed data set of variable-length '
                     'sequences (task uea, sentiment, music or audio); this task has no '
                     'lengths to bucket: set train.length_buckets=0')
  base.check_int('train.length_buckets', n)
  return arrays.Bucketed(task, n)


def longest_train_batch(task: Task, batch_size: int) -> dict[str, np.ndarray]:
  """A train batch of the longest shape ``task``'s train batches take (what the step's
  memory must fit): batch 0, or under length buckets one of the longest bucket's shape."""
  if isinstance(task, arrays.Bucketed):
    return task.longest_batch(batch_size)
  return task.batch('train', 0, batch_size)

"""Tasks: deterministic batches from (seed, split, step); see ``base`` for the interface.

A new task is one module with a ``from_config(task_cfg, seed) -> Task`` and one line
in ``TASKS``.
"""
from seqlab.tasks import adding
from seqlab.tasks import audio
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

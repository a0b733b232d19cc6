"""Population training: the points of a sweep that share one program train as one.

K points that differ only in values that change neither a shape nor the compiled
program (``VMAPPABLE``) train together in ``seqlab.train``'s one loop, their states
stacked along a leading population axis and the train step vmapped:

  states[k], metrics[k] = train_step(states[k], batches[k], optimizer=optimizer_k)

* Each point's optimizer gets that point's lr, clip_norm and weight_decay as traced
  arguments of ``optim.make_optimizer`` (``TRACED``), so the optimizer state has
  exactly the layout of a separate run's.
* Init-only values (``seed``, the forget-gate bias, the initialiser names) never reach
  the program: each point's state is created as its separate run creates it, and each
  point reads its own batches (the data order depends on the seed), stacked along K.
* Every point keeps a normal run's workdir (config.json, run_info.json, metrics.jsonl,
  tensorboard/, checkpoints/, best/, learning_curves.png), so seqlab.evaluate and
  seqlab.run work on it and the population resumes from those checkpoints.
* A point whose loss stops being finite stops writing (its last good checkpoint is
  kept) and is reported; the others go on.
* Over several devices the population axis is split over them (``P('pop')``) when K is
  a multiple of the device count; otherwise the population is replicated. One host.

This module decides which points may share a program (``signature``, ``partition``);
the loop is ``train.train_points``, the same one ``seqlab.run`` uses for one point.

``model.dropout`` is not vmappable: ``layers.StackedRNN`` and flax's ``nn.Dropout``
branch on the rate in Python, so a traced rate cannot reach them; points that differ
in it (or in a shape, a name, a step count) need programs of their own.

A point's results equal its separate run within float tolerance, not bitwise: the
vmapped matmuls may sum in another order.
"""
import collections
import json

from seqlab import optim
from seqlab import train

# Values the program reads as per-point arrays (the optimizer's numbers).
TRACED = tuple(f'optim.{k}' for k in optim.TRACEABLE)
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


def train_population(configs, workdirs) -> list:
  """Trains the K points ``configs`` (one ``signature``) in ``workdirs`` as one program
  (``train.train_points``: its results, one per point)."""
  if len({signature(c) for c in configs}) != 1:
    raise ValueError('these points cannot share one program; they differ in: '
                     + ', '.join(split_reasons(configs)))
  return train.train_points(configs, workdirs)

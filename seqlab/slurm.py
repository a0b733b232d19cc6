"""SLURM: a sweep as one job array, written as an sbatch script and submitted with sbatch.

  python -m seqlab.sweep --config experiments/adding.py:quick --workdir runs/s \\
      --sweep 'seed=[0,1,2,3]' --launcher=slurm [--wait] [--slurm_partition=P \\
      --slurm_time=2:00:00 --slurm_cpus_per_task=4 --slurm_gpus_per_task=1 \\
      --slurm_mem=16G --slurm_max_concurrent=8]

``seqlab.sweep`` cuts the points into elements (``sweep.elements``: one point each, one
population each in ``--mode=vmap``) and submits the unfinished ones as one array; element
``i`` runs ``python -m seqlab.sweep <the same flags> --element=i``, a normal sweep of its
points, on whichever node SLURM picks. This module knows SLURM alone: the script, the
check before submitting, the submission and the queue; the sweep knows the points.

Why sbatch and not submitit: submitit pickles a Python function and learns how its jobs
ended from ``sacct``, which needs SLURM's accounting daemon (slurmdbd and a MySQL
database) that small clusters and the local test cluster (``tests/slurm/local_cluster.sh``)
lack. A generated script needs neither, can be read and resubmitted by hand, and the
sweep's own files (``point.json``, checkpoints) say how each point ended; ``squeue`` says
which elements are still queued or running.
"""
import dataclasses
import os
import re
import shlex
import shutil
import subprocess

# The element's process gets SIGTERM this long before its time limit (``--signal``): a
# running point saves at its next step and exits within it, before SLURM's SIGKILL.
SIGNAL_MARGIN_S = 60
SCRIPT = 'sweep.sbatch'  # in <sweep workdir>/slurm/, with the elements' logs


class SlurmError(ValueError):
  """A request SLURM refuses (one line naming the option), or no SLURM to ask."""


@dataclasses.dataclass(frozen=True)
class Resources:
  """What each array element asks for; None and 0 leave SLURM's defaults."""
  partition: str | None = None
  time: str | None = None  # SLURM's forms: minutes, H:MM:SS, D-HH:MM:SS
  cpus_per_task: int = 1
  gpus_per_task: int = 0
  mem: str | None = None  # per node, e.g. 16G
  max_concurrent: int = 0  # the array's %N: at most N elements run at once

  def directives(self) -> list[str]:
    """The ``#SBATCH`` options, e.g. ``['--partition=gpu', '--cpus-per-task=4']``."""
    return [f'--{name}={value}' for name, value in (
        ('partition', self.partition), ('time', self.time),
        ('cpus-per-task', self.cpus_per_task), ('gpus-per-task', self.gpus_per_task),
        ('mem', self.mem)) if value]


# The seqlab.sweep flag that sets each resource (``--slurm_<key>``), to name it in an error.
FLAG_KEYS = tuple(f.name for f in dataclasses.fields(Resources))
FLAG = {key: f'--slurm_{key}' for key in FLAG_KEYS}


def array_spec(indices: list[int], max_concurrent: int = 0) -> str:
  """``[0, 1, 2, 5]`` -> ``'0-2,5'``; with ``max_concurrent=2``, ``'0-2,5%2'``."""
  runs, start = [], None
  for i, index in enumerate(indices):
    start = index if start is None else start
    if i + 1 == len(indices) or indices[i + 1] != index + 1:
      runs.append(f'{start}-{index}' if index > start else f'{index}')
      start = None
  return ','.join(runs) + (f'%{max_concurrent}' if max_concurrent else '')


def script(command: list[str], *, indices: list[int], resources: Resources, name: str,
           log_dir: str, cwd: str, pythonpath: str) -> str:
  """The sbatch script of the array: element ``i`` runs ``command --element=i``.

  ``exec`` makes the sweep the batch step's process itself, so that SLURM's SIGTERM (a
  cancel, the time limit's ``--signal``, a preemption) reaches it and its running point,
  which save at their next step; ``--requeue`` lets a preempted element start again.
  """
  lines = ['#!/bin/bash', f'#SBATCH --job-name={name}',
           f'#SBATCH --array={array_spec(indices, resources.max_concurrent)}',
           f'#SBATCH --output={os.path.join(log_dir, "%A_%a.out")}', '#SBATCH --open-mode=append',
           f'#SBATCH --chdir={cwd}', f'#SBATCH --signal=B:TERM@{SIGNAL_MARGIN_S}',
           '#SBATCH --requeue', *(f'#SBATCH {d}' for d in resources.directives()),
           '# Written by python -m seqlab.sweep --launcher=slurm; `sbatch <this file>` submits',
           '# it again (the elements skip their finished points).',
           f'export PYTHONPATH={shlex.quote(pythonpath)}${{PYTHONPATH:+:$PYTHONPATH}}',
           f'exec {shlex.join(command)} --element="$SLURM_ARRAY_TASK_ID"']
  return '\n'.join(lines) + '\n'


def _run(args: list[str]) -> subprocess.CompletedProcess:
  if shutil.which(args[0]) is None:
    raise SlurmError(f'--launcher=slurm needs SLURM\'s {args[0]} on PATH (and SLURM_CONF '
                     'pointing at the cluster when not the default); for a local cluster: '
                     'tests/slurm/local_cluster.sh up')
  return subprocess.run(args, capture_output=True, text=True, timeout=120)


def _node_limit(partition: str | None, field: str) -> int | None:
  """The largest ``sinfo`` ``field`` (%c CPUs, %m MB) of the partition's nodes."""
  result = _run(['sinfo', '-h', '-o', field, *(['-p', partition] if partition else [])])
  values = [int(v) for v in re.findall(r'\d+', result.stdout)]
  return max(values) if values else None


def _megabytes(mem: str) -> float:
  """SLURM's memory size (``16G``, ``500M``, ``2048``: megabytes) in megabytes."""
  match = re.fullmatch(r'(\d+(?:\.\d+)?)([KMGT]?)B?', mem.strip().upper())
  if not match:
    return 0.0  # a form sbatch refuses by itself, naming it
  return float(match[1]) * 1024.0 ** ('KMGT'.index(match[2] or 'M') - 1)


def _culprit(message: str, resources: Resources) -> str:
  """The resource a refusal of sbatch is about, as ``--flag=value (why)``."""
  text = message.lower()
  named = [('partition', 'partition'), ('time', 'time'), ('gres', 'gpus_per_task'),
           ('gpu', 'gpus_per_task'), ('memory', 'mem'), ('array', 'max_concurrent')]
  for word, key in named:
    if word in text and getattr(resources, key):
      return f'{FLAG[key]}={getattr(resources, key)}'
  cpus = _node_limit(resources.partition, '%c')
  if cpus is not None and resources.cpus_per_task > cpus:
    return (f'{FLAG["cpus_per_task"]}={resources.cpus_per_task} (its nodes have at most '
            f'{cpus} CPUs)')
  mem = _node_limit(resources.partition, '%m')
  if mem is not None and resources.mem and _megabytes(resources.mem) > mem:
    return f'{FLAG["mem"]}={resources.mem} (its nodes have at most {mem} MB)'
  asked = [f'{FLAG[k]}={v}' for k, v in dataclasses.asdict(resources).items() if v]
  return ', '.join(asked) or 'the request'


def check(path: str, resources: Resources) -> None:
  """``sbatch --test-only``: SlurmError in one line, naming the option, if SLURM would
  refuse the script at ``path``; nothing is submitted either way."""
  result = _run(['sbatch', '--test-only', path])
  if result.returncode == 0:
    return
  lines = [re.sub(r'^(sbatch: error: |allocation failure: )', '', line).strip()
           for line in result.stderr.splitlines() if line.strip()]
  reason = lines[-1] if lines else f'sbatch exited with code {result.returncode}'
  raise SlurmError(f'{_culprit(" ".join(lines), resources)}: SLURM refuses it: {reason}')


def submit(path: str) -> str:
  """Submits the script at ``path``; returns the job id."""
  result = _run(['sbatch', '--parsable', path])
  if result.returncode != 0:
    raise SlurmError(f'sbatch {path} failed: {result.stderr.strip().splitlines()[-1:]}')
  return result.stdout.strip().split(';')[0]


def queued(job: str) -> dict[int, str]:
  """The array's elements still in the queue: index -> state (PENDING, RUNNING, ...).

  An element pending as a group (``12_[3-5%2]``) is listed one by one (``-r``)."""
  result = _run(['squeue', '-h', '-r', '-j', job, '-o', '%K %T'])
  if result.returncode != 0:  # a job the controller has forgotten: none of it is queued
    return {}
  rows = (line.split() for line in result.stdout.splitlines())
  return {int(row[0]): row[1] for row in rows if len(row) == 2 and row[0].isdigit()}

"""Launches one experiment.

  python -m seqlab.run --config experiments/adding.py:quick --workdir runs/adding \\
      [--config.model.cell=gru --config.optim.lr=3e-3 ...]

--config FILE.py[:VARIANT] picks the experiment and one of its variants (every
experiment has :quick, a run of seconds; the others are listed in its docstring);
--config.KEY=VALUE overrides any config key (README.md, Config schema). Running the
same command on the same workdir resumes from its latest checkpoint.
"""
STOPPED = (' before training started (nothing is left half-written); the same command '
           'starts it again.')
if __name__ == '__main__':  # first, before jax imports: a Ctrl-C at any moment stops it
  from seqlab import signals  # pylint: disable=g-import-not-at-top
  signals.exit_until_caught(STOPPED)
import os
import re
import sys

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from seqlab import cli
from seqlab import config as config_lib
from seqlab import memory
from seqlab import signals
from seqlab import train
from seqlab import workdir as workdir_lib

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Experiment file[:variant].',
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Run directory (default runs/<experiment>).')
_DISTRIBUTED = flags.DEFINE_enum(
    'distributed', 'auto', ['auto', 'on', 'off'],
    'Multi-host: call jax.distributed.initialize() before anything touches the devices. '
    "'auto' does when the environment describes a cluster of several processes (SLURM "
    'with more than one task, JAX_COORDINATOR_ADDRESS, a multi-host TPU slice).')

# Environment variables that describe a multi-process job jax.distributed can join.
CLUSTER_ENV = ('JAX_COORDINATOR_ADDRESS', 'MEGASCALE_COORDINATOR_ADDRESS')


def in_cluster(env=None) -> bool:
  """Whether ``env`` (os.environ) describes a job of several processes."""
  env = os.environ if env is None else env
  if any(env.get(k) for k in CLUSTER_ENV):
    return True
  if int(env.get('SLURM_NTASKS', '1') or 1) > 1 and 'SLURM_JOB_ID' in env:
    return True
  hosts = env.get('TPU_WORKER_HOSTNAMES', '')
  return len([h for h in hosts.split(',') if h]) > 1


def initialize_distributed(mode: str, env=None) -> bool:
  """Joins the cluster (``jax.distributed.initialize``) when ``mode`` says so; True if it did.

  The coordinator, process count and index come from the environment (SLURM, TPU
  metadata, or JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID). Under
  SLURM each task of an ``srun`` step is one process (jax's ``SlurmCluster`` reads
  SLURM_STEP_NODELIST, SLURM_NTASKS, SLURM_PROCID); the batch script of a job of several
  tasks is none of them, and raises ValueError rather than wait for a peer forever.
  """
  if mode == 'off' or (mode == 'auto' and not in_cluster(env)):
    return False
  env = os.environ if env is None else env
  if int(env.get('SLURM_NTASKS', '1') or 1) > 1 and 'SLURM_STEP_ID' not in env and not any(
      env.get(k) for k in CLUSTER_ENV):  # sbatch -n 2 --wrap 'python -m seqlab.run ...'
    raise ValueError(f'this process is the batch script of a SLURM job of '
                     f'{env["SLURM_NTASKS"]} tasks, not one of its tasks; start them with '
                     'srun (srun python -m seqlab.run ...)')
  import jax  # pylint: disable=g-import-not-at-top
  explicit = {}  # a hand-made cluster (no SLURM / TPU metadata): all three from the env
  address = env.get('JAX_COORDINATOR_ADDRESS', '')
  if address and not re.fullmatch(r'\[?[^\s]+\]?:\d+', address):  # jax: an IndexError
    raise ValueError(f'JAX_COORDINATOR_ADDRESS={address!r} needs a port, host:port '
                     '(e.g. 10.0.0.1:1234)')
  if env.get('JAX_COORDINATOR_ADDRESS') and env.get('JAX_NUM_PROCESSES'):
    explicit = dict(coordinator_address=env['JAX_COORDINATOR_ADDRESS'],
                    num_processes=int(env['JAX_NUM_PROCESSES']),
                    process_id=int(env.get('JAX_PROCESS_ID', '0')))
  jax.distributed.initialize(**explicit)
  logging.info('jax.distributed: process %d of %d, %d local / %d global devices',
               jax.process_index(), jax.process_count(), jax.local_device_count(),
               jax.device_count())
  return True


def default_workdir(config_path: str) -> str:
  name, _, variant = config_path.partition(':')
  stem = os.path.splitext(os.path.basename(name))[0]
  return os.path.join('runs', stem + (f'_{variant}' if variant else ''))


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {" ".join(argv[1:])}')
  if not flags.FLAGS['config'].present:
    raise app.UsageError('--config experiments/<name>.py[:variant] is required')
  path = config_flags.get_config_filename(flags.FLAGS['config'])
  workdir_lib.quiet_logging()
  workdir = _WORKDIR.value or default_workdir(path)
  try:
    initialize_distributed(_DISTRIBUTED.value)
  except (RuntimeError, ValueError) as e:
    print(f'seqlab: cannot join the cluster (jax.distributed.initialize): '
          f'{str(e).rstrip(".")}. Check the '
          'coordinator address and process count, or pass --distributed=off.', file=sys.stderr)
    return 2
  try:
    metrics = train.train_and_evaluate(_CONFIG.value, workdir)
  except workdir_lib.WorkdirError as e:
    print(f'seqlab: {e}', file=sys.stderr)
    return 2
  except config_lib.ConfigError as e:
    print(f'seqlab: bad config: {e}', file=sys.stderr)
    return 2
  except train.NonFiniteError as e:
    print(f'seqlab: training stopped: {e}', file=sys.stderr)
    return 1
  except workdir_lib.WriteError as e:  # a checkpoint, metrics.jsonl, TensorBoard events
    cli.exit_after_write_error(e)
  except (MemoryError, RuntimeError) as e:  # XLA's RESOURCE_EXHAUSTED is a RuntimeError
    if not memory.out_of_memory(e):
      raise
    print(f'seqlab: training stopped: {memory.out_of_memory(e)}', file=sys.stderr)
    return 1
  if metrics:
    print('final eval: ' + ', '.join(f'{k}={v:.5g}' for k, v in sorted(metrics.items())
                                  if k != 'count'))
    print(test_line(workdir_lib.logged_test(workdir, _CONFIG.value.train.steps)))
  return 0


def test_line(rows: dict[str, dict]) -> str:
  """'test: best-on-eval checkpoint (step 300) mse=0.01, ...; last (step 400) mse=...':
  the test rows of a finished run (``workdir.logged_test``)."""
  parts = []
  for name, label in (('best', 'best-on-eval checkpoint'), ('last', 'last')):
    row = rows[name]
    parts.append(f'{label} (step {row["checkpoint_step"]:g}) ' + ', '.join(
        f'{k}={v:.5g}' for k, v in sorted(row.items())
        if k not in ('step', 'split', 'count', 'checkpoint', 'checkpoint_step')))
  return 'test: ' + '; '.join(parts)


def run():
  signals.exit_until_caught(STOPPED)  # the seqlab-run script: from after the imports on
  app.run(lambda argv: sys.exit(main(argv)), flags_parser=cli.parser(
      flags.FLAGS, hint='Config keys and their meaning are listed in README.md (Config schema).'))


if __name__ == '__main__':
  run()

"""Multi-host training: two processes on one machine joined by jax.distributed."""
import json
import os
import socket
import subprocess
import sys

from seqlab import run
from seqlab import workdir as workdir_lib
from conftest import ROOT, cpu_env, run_module


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('localhost', 0))
    return s.getsockname()[1]


def test_in_cluster_reads_the_environment():
  assert not run.in_cluster({})
  assert not run.in_cluster({'SLURM_JOB_ID': '7', 'SLURM_NTASKS': '1'})
  assert run.in_cluster({'SLURM_JOB_ID': '7', 'SLURM_NTASKS': '4'})
  assert run.in_cluster({'JAX_COORDINATOR_ADDRESS': 'host:1234'})
  assert not run.in_cluster({'TPU_WORKER_HOSTNAMES': 'a'})
  assert run.in_cluster({'TPU_WORKER_HOSTNAMES': 'a,b'})
  assert not run.initialize_distributed('off', {'JAX_COORDINATOR_ADDRESS': 'host:1'})
  assert not run.initialize_distributed('auto', {})


def test_two_processes_train_like_one(tmp_path):
  """Each process feeds its half of the global batch; the run equals a one-process run."""
  args = ['-m', 'seqlab.run', '--config', 'experiments/adding.py:quick']
  port = _free_port()
  procs = []
  for i in range(2):
    env = dict(os.environ, **cpu_env(), JAX_COORDINATOR_ADDRESS=f'localhost:{port}',
               JAX_NUM_PROCESSES='2', JAX_PROCESS_ID=str(i))
    procs.append(subprocess.Popen([sys.executable, *args, '--workdir', str(tmp_path / 'two')],
                                  cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True))
  outs = [p.communicate(timeout=300) for p in procs]
  for p, (_, err) in zip(procs, outs):
    assert p.returncode == 0, err[-3000:]
  one = run_module('seqlab.run', *args[2:], '--workdir', str(tmp_path / 'one'), env=cpu_env())
  assert one.returncode == 0, one.stderr[-3000:]
  evals = {name: [r for r in workdir_lib.read_metrics(str(tmp_path / name))
                  if r['split'] == 'eval'] for name in ('one', 'two')}
  assert len(evals['one']) == len(evals['two']) == 2
  for a, b in zip(evals['one'], evals['two']):
    assert abs(a['loss'] - b['loss']) <= 1e-5 * abs(a['loss'])
  with open(tmp_path / 'two' / 'run_info.json') as f:
    assert len(json.load(f)['devices']) == 2
  assert sorted(os.listdir(tmp_path / 'two' / 'checkpoints')) == ['20', '40']

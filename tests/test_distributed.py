"""Multi-host training: two processes on one machine joined by jax.distributed."""
import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from seqlab import run
from seqlab import workdir as workdir_lib
from conftest import HANG_S, ROOT, cpu_env, run_module


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
  with pytest.raises(ValueError, match='needs a port'):  # not an IndexError inside jax
    run.initialize_distributed('on', {'JAX_COORDINATOR_ADDRESS': 'notahost',
                                      'JAX_NUM_PROCESSES': '1'})


def _start_two_processes(args, workdir):
  """``python *args --workdir workdir`` as the two processes of one jax.distributed job."""
  port, procs = _free_port(), []
  for i in range(2):
    env = dict(os.environ, **cpu_env(), JAX_COORDINATOR_ADDRESS=f'localhost:{port}',
               JAX_NUM_PROCESSES='2', JAX_PROCESS_ID=str(i))
    procs.append(subprocess.Popen([sys.executable, *args, '--workdir', str(workdir)],
                                  cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True))
  return procs


def _communicate(procs, timeout):
  try:
    return [p.communicate(timeout=timeout) for p in procs]
  finally:
    for p in procs:
      if p.poll() is None:  # hung: do not leave it running
        p.kill()


def test_two_processes_train_like_one(tmp_path):
  """Each process feeds its half of the global batch; the run equals a one-process run."""
  args = ['-m', 'seqlab.run', '--config', 'experiments/adding.py:quick']
  procs = _start_two_processes(args, tmp_path / 'two')
  outs = _communicate(procs, timeout=HANG_S)
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


def test_sigterm_to_one_process_stops_both_at_the_same_step(tmp_path):
  """A scheduler may signal one host of a job first: both processes still save the
  same step and exit 0 (the other would otherwise wait forever in the next step's
  collectives or in the save)."""
  args = ['-m', 'seqlab.run', '--config', 'experiments/adding.py:quick',
          '--config.train.steps=100000', '--config.train.log_every=5',
          '--config.train.eval_every=100000', '--config.train.checkpoint_every=100000']
  workdir = tmp_path / 'two'
  procs = _start_two_processes(args, workdir)
  deadline = time.time() + HANG_S
  while time.time() < deadline and not workdir_lib.read_metrics(str(workdir)):
    time.sleep(0.05)
  procs[1].send_signal(signal.SIGTERM)  # not the one that writes the metrics
  outs = _communicate(procs, timeout=HANG_S)
  steps = []
  for p, (out, err) in zip(procs, outs):
    assert p.returncode == 0, err[-3000:]
    steps.append(int(out.split('saved the checkpoint at step ')[1].split()[0]))
  assert steps[0] == steps[1] and 'a signal to another process' in outs[0][0]
  assert os.listdir(workdir / 'checkpoints') == [str(steps[0])]

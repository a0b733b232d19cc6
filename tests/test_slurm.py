"""SLURM: sweeps as job arrays and multi-host runs under srun, on a real local cluster.

The tests marked ``slurm`` run against ``tests/slurm/local_cluster.sh``: ``.ci/run``
starts it before the suite and stops it after; a test session that finds it down starts
it (under a file lock: xdist workers share one cluster) and leaves it up for the next
(``tests/slurm/local_cluster.sh down`` stops it). They skip only where SLURM is neither
installed nor installable (not root, or no apt-get). Each compares with the same config
trained here in-process (``train.train_and_evaluate``: what a local sweep's point or a
one-process ``seqlab.run`` runs).
"""
import fcntl
import json
import os
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest

from seqlab import cli
from seqlab import run
from seqlab import slurm
from seqlab import sweep
from seqlab import train
from conftest import HANG_S, ROOT, load_config, run_module

CLUSTER = os.path.join(ROOT, 'tests', 'slurm', 'local_cluster.sh')
STEPS = 200  # long enough to cancel a point between its first logged step and its end
ARGS = ('--config', 'experiments/adding.py:quick', f'--config.train.steps={STEPS}')
METRICS = ('loss', 'mae', 'mse')


# --- Without a cluster --------------------------------------------------------------------


def test_array_spec_compresses_runs_and_caps_concurrency():
  assert slurm.array_spec([0, 1, 2, 5]) == '0-2,5'
  assert slurm.array_spec([3], 2) == '3%2'
  assert slurm.array_spec([0, 2, 3, 4, 7, 8], 4) == '0,2-4,7-8%4'


def test_shard_auto_reads_the_job_array():
  env = {'SLURM_ARRAY_TASK_ID': '5', 'SLURM_ARRAY_TASK_MIN': '1',
         'SLURM_ARRAY_TASK_COUNT': '8'}
  assert sweep.parse_shard('auto', env) == (4, 8)
  with pytest.raises(sweep.SweepError, match='only a SLURM job array sets'):
    sweep.parse_shard('auto', {})


def test_a_vmap_population_stays_in_one_element():
  config = load_config('adding')
  raw = [{'seed': 0}, {'seed': 1}, {'model.hidden_size': 8, 'seed': 0}, {'seed': 2}]
  points = sweep.check_points(config, raw, '/nonexistent', 'adding.py:quick')
  parts = sweep.elements(points, 'vmap')
  assert [[p.index for p in part] for part in parts] == [[0, 1, 3], [2]]
  assert [[p.index for p in part] for part in sweep.elements(points, 'processes')] == [
      [0], [1], [2], [3]]


def test_the_batch_script_of_a_two_task_job_is_told_to_use_srun():
  with pytest.raises(ValueError, match='srun'):  # not a wait for a peer that never comes
    run.initialize_distributed('auto', {'SLURM_JOB_ID': '7', 'SLURM_NTASKS': '2'})


# --- On the local cluster -------------------------------------------------------------------


@pytest.fixture(scope='session')
def cluster():
  """The environment of SLURM's commands for the local cluster, started if down."""
  with open(os.path.join('/tmp', f'seqlab-slurm-{os.geteuid()}.lock'), 'w') as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)  # one `up` at a time across xdist workers
    up = subprocess.run([CLUSTER, 'up'], capture_output=True, text=True, timeout=HANG_S)
  if up.returncode != 0 and (os.geteuid() != 0 or not shutil.which('apt-get')):
    pytest.skip(f'no local SLURM cluster (needs root and apt-get to start): '
                f'{(up.stderr.strip().splitlines() or [""])[-1]}')
  assert up.returncode == 0, up.stderr
  exports = subprocess.run([CLUSTER, 'env'], capture_output=True, text=True, check=True)
  env = dict(os.environ)
  for line in exports.stdout.splitlines():
    key, _, value = line.removeprefix('export ').partition('=')
    env[key] = value
  return env


def _wait_for(what, predicate, timeout=HANG_S, every=0.1):
  t0 = time.monotonic()
  while not predicate():
    assert time.monotonic() - t0 < timeout, f'waited {timeout} s for {what}'
    time.sleep(every)


def _queued(job: str, env) -> bool:
  out = subprocess.run(['squeue', '-h', '-j', job, '-o', '%i'], capture_output=True,
                       text=True, env=env)
  return bool(out.stdout.strip())


def _reference(tmp_path, seed: int) -> dict:
  """The final eval of the point trained in this process, uninterrupted."""
  config = load_config('adding')
  config.unlock()
  config.train.steps, config.seed = STEPS, seed
  return train.train_and_evaluate(config, str(tmp_path / f'reference_{seed}'))


def _assert_equal(metrics: dict, reference: dict):
  np.testing.assert_allclose([metrics[k] for k in METRICS], [reference[k] for k in METRICS],
                             rtol=1e-5)


@pytest.mark.slurm
def test_sweep_as_a_job_array_survives_a_cancelled_element(cluster, tmp_path):
  workdir = str(tmp_path / 'sweep')
  args = (*ARGS, '--workdir', workdir, '--sweep', 'seed=[0,1,2,3]', '--launcher=slurm')
  first = run_module('seqlab.sweep', *args, env=cluster)
  assert first.returncode == 0, first.stderr
  with open(os.path.join(workdir, 'slurm', 'job.json')) as f:
    job = json.load(f)['job']
  assert '--array=0-3' in open(os.path.join(workdir, 'slurm', slurm.SCRIPT)).read()

  # Element 0 (seed=0) is cancelled mid-run: SIGTERM, it saves at its step.
  point = os.path.join(workdir, 'seed=0')
  _wait_for('a logged step of seed=0', lambda: (sweep.last_step(point) or 0) >= 10
            or not _queued(job, cluster), every=0.2)
  assert (sweep.last_step(point) or 0) < STEPS, 'element 0 ended before it was cancelled'
  subprocess.run(['scancel', f'{job}_0'], check=True, env=cluster)
  _wait_for(f'job {job} to end', lambda: not _queued(job, cluster), every=1)
  assert sweep.read_point(point)['status'] == 'interrupted'
  log = open(os.path.join(point, 'log.txt')).read()
  assert 'SIGTERM: saved the checkpoint at step' in log, log[-2000:]

  # The same command resubmits element 0 alone, and --wait follows it to its end.
  again = run_module('seqlab.sweep', *args, '--wait', env=cluster)
  assert again.returncode == 0, again.stdout + again.stderr
  assert '1 to submit' in again.stdout and '(array 0,' in again.stdout, again.stdout
  assert 'slurm job' in again.stdout and ': 4 of 4 done, 0 running, 0 pending, 0 failed' in (
      again.stdout)
  assert 'Resumed from the checkpoint' in open(os.path.join(point, 'log.txt')).read()
  with open(os.path.join(workdir, 'sweep.json')) as f:
    assert [p['status'] for p in json.load(f)['points']] == ['done'] * 4
  for seed in range(4):
    _assert_equal(sweep.final_metrics(os.path.join(workdir, f'seed={seed}')),
                  _reference(tmp_path, seed))


@pytest.mark.slurm
@pytest.mark.parametrize('flag, value', [('--slurm_partition', 'nonexistent'),
                                         ('--slurm_cpus_per_task', '64')])
def test_a_bad_resource_request_is_one_line_and_submits_nothing(cluster, tmp_path, capsys,
                                                                 monkeypatch, flag, value):
  monkeypatch.setenv('SLURM_CONF', cluster['SLURM_CONF'])
  monkeypatch.chdir(ROOT)
  workdir = str(tmp_path / f'bad_{flag[2:]}')
  argv = ['seqlab.sweep', '--config', 'experiments/adding.py:quick', '--workdir', workdir, '--sweep', 'seed=[0,1]',
          '--launcher=slurm', f'{flag}={value}']
  try:
    cli.parser(sweep.FLAGS)(argv)
    code = sweep.main(['seqlab.sweep'])
  finally:
    sweep.FLAGS.unparse_flags()
  err = capsys.readouterr().err
  assert code == 2
  assert len(err.strip().splitlines()) == 1 and f'{flag}={value}' in err, err
  assert not os.path.exists(os.path.join(workdir, 'slurm', 'job.json'))
  jobs = subprocess.run(['squeue', '-h', '-t', 'all', '-o', '%j'], capture_output=True,
                        text=True, env=cluster, check=True).stdout.split()
  assert f'seqlab-sweep-{os.path.basename(workdir)}' not in jobs


@pytest.mark.slurm
def test_two_tasks_under_srun_equal_one_process(cluster, tmp_path):
  workdir = str(tmp_path / 'run')
  command = [sys.executable, '-m', 'seqlab.run', *ARGS, '--workdir', workdir]
  env = dict(cluster, PYTHONPATH=os.pathsep.join(p for p in (ROOT, os.environ.get(
      'PYTHONPATH')) if p), JAX_PLATFORMS='cpu')

  # sbatch of a two-task job, cancelled mid-run: both processes save the same step.
  batch = tmp_path / 'two_tasks.sbatch'
  batch.write_text('#!/bin/bash\n#SBATCH --ntasks=2 --cpus-per-task=1\n'
                   f'#SBATCH --output={tmp_path}/two_tasks.out --chdir={ROOT}\n'
                   f'srun {" ".join(command)}\n')
  job = subprocess.run(['sbatch', '--parsable', str(batch)], capture_output=True, text=True,
                       env=env, check=True).stdout.strip()
  _wait_for('a logged step', lambda: (sweep.last_step(workdir) or 0) >= 10
            or not _queued(job, env), every=0.2)
  assert (sweep.last_step(workdir) or 0) < STEPS, (tmp_path / 'two_tasks.out').read_text()
  subprocess.run(['scancel', job], check=True, env=env)
  _wait_for(f'job {job} to end', lambda: not _queued(job, env), every=1)
  out = (tmp_path / 'two_tasks.out').read_text()
  saved = [line for line in out.splitlines() if ': saved the checkpoint at step' in line]
  assert len(saved) == 2, out[-3000:]
  steps = {line.split('at step ')[1].split()[0] for line in saved}
  assert len(steps) == 1 and int(steps.pop()) < STEPS, saved

  # srun -n 2 resumes it to the end, equal to one process.
  resumed = subprocess.run(['srun', '--ntasks=2', '--cpus-per-task=1', *command], cwd=ROOT,
                           env=env, capture_output=True, text=True, timeout=HANG_S)
  assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-2000:]
  with open(os.path.join(workdir, 'run_info.json')) as f:
    assert len(json.load(f)['devices']) == 2  # one process per task, joined
  train_steps = [r['step'] for r in sweep.workdir_lib.read_metrics(workdir)
                 if r['split'] == 'train']
  assert train_steps == sorted(set(train_steps)), train_steps  # process 0 wrote each once
  _assert_equal(sweep.final_metrics(workdir), _reference(tmp_path, 0))


def test_launcher_flags_without_the_launcher_are_refused(tmp_path, capsys):
  argv = ['seqlab.sweep', '--config', 'experiments/adding.py:quick', '--workdir',
          str(tmp_path / 'sweep'), '--slurm_time=1:00:00']
  try:
    cli.parser(sweep.FLAGS)(argv)
    code = sweep.main(['seqlab.sweep'])
  finally:
    sweep.FLAGS.unparse_flags()
  assert code == 2
  assert '--slurm_time is for --launcher=slurm' in capsys.readouterr().err
  assert not os.path.exists(tmp_path / 'sweep')  # nothing ran

"""Shared test helpers: strict promotion for every test, experiment configs, the CLI in
a subprocess, pytree comparison."""
import atexit
import importlib.util
import os
import shutil
import shlex
import signal
import subprocess
import sys
import tempfile
import time


def _share_compilations():
  """One persistent JAX compilation cache for this pytest run, its xdist workers and
  every ``seqlab`` tool they start (set before jax imports; the workers and the tools
  inherit the environment): the many runs of one ``:quick`` experiment compile its
  steps once. A fresh directory a run, removed at its end, so no run reads another's
  programs; a ``JAX_COMPILATION_CACHE_DIR`` already set is kept (a developer's own)."""
  if 'JAX_COMPILATION_CACHE_DIR' in os.environ:
    return
  directory = tempfile.mkdtemp(prefix='seqlab-tests-jax-cache-')
  os.environ['JAX_COMPILATION_CACHE_DIR'] = directory
  os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0')
  atexit.register(shutil.rmtree, directory, ignore_errors=True)


_share_compilations()
# The environment of a process that may die in the middle of a write (a signal before
# training, which ends it by ``os._exit``; a full disk; SIGKILL): jax writes a cache
# entry in place, and a torn one would cost every later reader a warning and a compile.
NO_COMPILATION_CACHE = {'JAX_ENABLE_COMPILATION_CACHE': 'false'}
import jax  # pylint: disable=g-import-not-at-top,wrong-import-position
import numpy as np
import pytest

@pytest.fixture(autouse=True)
def strict_promotion():
  """Every test runs with strict dtype promotion and without implicit rank promotion, so
  a silent upcast or broadcast in seqlab fails (as Equinox's suite does). A test of code
  that is not ours may relax it around that call (optax: ``numpy_dtype_promotion``).
  """
  with jax.numpy_dtype_promotion('strict'), jax.numpy_rank_promotion('raise'):
    yield


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXPERIMENTS = os.path.join(ROOT, 'experiments')

# How long a test waits on a subprocess before calling it hung. A guard against a hang,
# never a speed limit: on a 2-core machine loaded by other jobs a 2-minute bench ran past
# 120 s while still making progress (issue 30; the whole suite took 50 min there), so
# a test fails on a wall-clock limit only when something is stuck for this long.
HANG_S = 1800


def load_config(name: str, variant: str | None = 'quick'):
  """``experiments/<name>.py``'s get_config(variant)."""
  path = os.path.join(EXPERIMENTS, f'{name}.py')
  spec = importlib.util.spec_from_file_location(f'experiment_{name}', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(variant)


def run_module(module: str, *args, env=None, timeout=HANG_S, file_limit_kib=None, **kwargs):
  """``python -m <module> args`` from the repo root; returns the CompletedProcess.

  ``file_limit_kib``: no file the process writes may grow past it, a real full disk
  for each write (TensorStore's ValueError for a checkpoint, an OSError elsewhere).
  The shell sets it (``ulimit -f``; SIGXFSZ ignored, so a write past it fails) rather
  than a ``preexec_fn`` forked from this multithreaded process.
  """
  full_env = dict(os.environ, **(env or {}))
  command = [sys.executable, '-m', module, *args]
  if file_limit_kib is not None:
    full_env.update(NO_COMPILATION_CACHE)
    command = ['bash', '-c', f"trap '' XFSZ; ulimit -f {int(file_limit_kib)}; "
               f'exec {shlex.join(command)}']
  return subprocess.run(command, cwd=ROOT, env=full_env, capture_output=True, text=True,
                        timeout=timeout, **kwargs)


def handles_signals(pid: int) -> bool:
  """Whether process ``pid`` has its own handlers for SIGINT and SIGTERM (Linux's
  /proc/<pid>/status SigCgt; True where there is no /proc). A seqlab tool installs
  them in its first line (``seqlab.signals``); before, the interpreter is starting up
  (site.py, the venv's .pth files), which no code of ours can shorten: on a loaded
  2-core machine that took more than 0.2 s."""
  try:
    with open(f'/proc/{pid}/status') as f:
      mask = int(next(l for l in f if l.startswith('SigCgt:')).split()[1], 16)
  except FileNotFoundError:
    return not os.path.isdir('/proc/self')
  except (OSError, StopIteration):
    return False
  return all(mask >> (s - 1) & 1 for s in (signal.SIGINT, signal.SIGTERM))


def signal_when(module: str, args, ready, timeout=HANG_S, sig=signal.SIGTERM,
                handled=False, env=None):
  """Starts ``python -m <module> args`` from the repo root, sends it ``sig`` once
  ``ready()`` is true (and, with ``handled``, once it ``handles_signals``) or
  ``timeout`` s have passed, and returns the CompletedProcess with ``.exit_s``, the
  seconds from the signal to the exit; a process still running ``timeout`` s after
  the signal is killed, not left behind. ``env`` adds to the environment (a signal that
  ends the process before training: ``NO_COMPILATION_CACHE``)."""
  proc = subprocess.Popen([sys.executable, '-m', module, *args], cwd=ROOT,
                          env=dict(os.environ, **(env or {})), stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)
  deadline = time.time() + timeout
  while time.time() < deadline and not (ready() and (not handled or handles_signals(proc.pid))):
    time.sleep(0.01)
  proc.send_signal(sig)
  sent = time.time()
  try:
    out, err = proc.communicate(timeout=timeout)
  finally:
    if proc.poll() is None:
      proc.kill()
  done = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
  done.exit_s = time.time() - sent
  return done


def cpu_env(devices: int = 1) -> dict:
  """Environment for a subprocess on ``devices`` CPU devices, on any machine: the
  multi-device and multi-process tests simulate a cluster on the host's CPU, and on a
  GPU machine JAX would otherwise pick its one GPU (two processes on one GPU, or
  TF32 matmuls against a CPU reference)."""
  env = {'JAX_PLATFORMS': 'cpu'}
  if devices > 1:
    env['XLA_FLAGS'] = f'--xla_force_host_platform_device_count={devices}'
  return env


@pytest.fixture
def cpu_backend(monkeypatch):
  """Traces and compiles on XLA:CPU on any machine, for tests of what XLA:CPU compiles
  (dots and copies in the compiled HLO, the in-place backward of ``scan.IN_PLACE_BACKENDS``):
  ``jax.default_backend()``, which ``seqlab.scan`` reads for its per-backend defaults,
  says 'cpu', and uncommitted computations run on the first CPU device."""
  monkeypatch.setattr(jax, 'default_backend', lambda: 'cpu')
  with jax.default_device(jax.devices('cpu')[0]):
    yield


@pytest.fixture
def quick_config():
  return load_config


def assert_trees_close(a, b, rtol=1e-5, atol=1e-5):
  """Two pytrees of one structure, leaf by leaf within ``rtol`` and ``atol``."""
  assert jax.tree.structure(a) == jax.tree.structure(b)
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=rtol, atol=atol), a, b)

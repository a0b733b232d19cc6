"""Shared test helpers: load experiment configs, run the CLI in a subprocess."""
import importlib.util
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXPERIMENTS = os.path.join(ROOT, 'experiments')


def load_config(name: str, variant: str | None = 'quick'):
  """``experiments/<name>.py``'s get_config(variant)."""
  path = os.path.join(EXPERIMENTS, f'{name}.py')
  spec = importlib.util.spec_from_file_location(f'experiment_{name}', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(variant)


def run_module(module: str, *args, env=None, timeout=300, **kwargs):
  """``python -m <module> args`` from the repo root; returns the CompletedProcess."""
  full_env = dict(os.environ, **(env or {}))
  return subprocess.run([sys.executable, '-m', module, *args], cwd=ROOT, env=full_env,
                        capture_output=True, text=True, timeout=timeout, **kwargs)


@pytest.fixture
def quick_config():
  return load_config

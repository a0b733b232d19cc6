"""The gradient-through-time diagnostic against an independent perturbation loop."""
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from seqlab import config as config_lib
from seqlab import diagnose
from seqlab import losses
from seqlab import train
from conftest import HANG_S, ROOT, load_config, run_module


def _config(cell, length=12, hidden=8):
  c = config_lib.base_config()
  c.task = ml_collections.ConfigDict(dict(name='adding', length=length))
  c.model.cell = cell
  c.model.hidden_size = hidden
  return c


def _reference(cell_name, config, lengths=None):
  """dL/d carry_t by adding a zero perturbation to the carry after every step; with
  ``lengths``, a row's carry stops at its end and the mean is over the rows that
  reach step t."""
  task, model, optimizer = train.build(config)
  batch = dict(task.batch('eval', 0, 5))
  time = batch['inputs'].shape[1]
  valid = np.ones((5, time), bool)
  if lengths is not None:
    valid = np.arange(time)[None, :] < np.asarray(lengths)[:, None]
    batch['inputs'] = np.where(valid[..., None], batch['inputs'], 7.0)  # padding
    batch['lengths'] = np.asarray(lengths, np.int32)
  params = train.create_state(model, optimizer, batch, config.seed)['params']
  p = params['params']
  cell = model.encoder.make_cell()
  cp = p['encoder']['layer_0']['cell']
  xs = jnp.asarray(batch['inputs'])
  time = xs.shape[1]

  def loss(deltas):
    carry = cell.initial_carry((xs.shape[0],))
    for t in range(time):  # a plain Python loop: independent of seqlab.scan
      new, _ = cell.recur(cp, carry, cell.project(cp, xs[:, t]))
      new = jax.tree.map(lambda c, d: c + d[t], new, deltas)
      carry = jax.tree.map(lambda n, c: jnp.where(valid[:, t, None], n, c), new, carry)
    out = cell.output(carry) @ p['head']['kernel'] + p['head']['bias'][None, :]
    return losses.loss_and_metrics(task.spec, out, batch)[0] * xs.shape[0]

  zeros = jax.tree.map(lambda c: jnp.zeros((time,) + c.shape), cell.initial_carry((5,)))
  grads = jax.grad(loss)(zeros)
  sq = sum(jnp.sum(g ** 2, axis=-1) for g in jax.tree.leaves(grads))  # [time, batch]
  expected = np.asarray(jnp.sum(jnp.sqrt(sq), axis=1)) / valid.sum(0)
  got = diagnose.carry_gradient_norms(model, params, batch, task.spec)
  return got, expected


@pytest.mark.parametrize('cell', ['rnn', 'lstm', 'gru'])
@pytest.mark.parametrize('lengths', [None, [12, 5, 8, 3, 12]])
def test_carry_gradient_norms_match_perturbation_gradients(cell, lengths):
  got, expected = _reference(cell, _config(cell), lengths)
  np.testing.assert_allclose(got, expected, rtol=1e-4)


def test_picture_is_written(tmp_path):
  curves = diagnose.compare_cells(['rnn', 'lstm'], length=10, hidden=8)
  out = tmp_path / 'v.png'
  diagnose.plot(curves, str(out), 'test')
  assert out.stat().st_size > 1000
  assert all(len(v) == 10 for v in curves.values())


def test_without_workdir_it_writes_under_runs_and_says_where(tmp_path):
  """No --workdir, no --out: runs/diagnose/, not the current directory (it once left
  vanishing_gradients.png and .json untracked in the repository's root)."""
  proc = subprocess.run([sys.executable, '-m', 'seqlab.diagnose', '--cells', 'rnn',
                         '--length', '5', '--hidden', '4'], cwd=tmp_path, text=True,
                        capture_output=True, env=dict(os.environ, PYTHONPATH=ROOT),
                        timeout=HANG_S)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert os.listdir(tmp_path) == ['runs']
  out = os.path.join('runs', 'diagnose', 'vanishing_gradients')
  assert sorted(os.listdir(tmp_path / 'runs' / 'diagnose')) == [
      'vanishing_gradients.json', 'vanishing_gradients.png']
  assert f'wrote {out}.png and {out}.json' in proc.stdout


def test_rejects_models_it_cannot_read():
  c = _config('lstm')
  c.model.bidirectional = True
  with pytest.raises(ValueError, match='unidirectional'):
    diagnose.norms_for_config(c)
  with pytest.raises(ValueError, match='this run has a Seq2Seq'):  # no AttributeError
    diagnose.norms_for_config(load_config('reverse'))


def test_trained_runs_each_get_a_curve(tmp_path):
  """``--workdir a,b``: one curve per run, even for two runs of the same cell at the same
  step (their labels once collided and one curve replaced the other)."""
  workdirs = []
  for seed in (0, 1):
    config = load_config('adding')
    config.seed, config.train.steps = seed, 20
    workdirs.append(str(tmp_path / f'seed{seed}'))
    train.train_and_evaluate(config, workdirs[-1])
  curves, task_name = diagnose.trained_curves(workdirs)
  assert task_name == 'adding' and len(curves) == 2
  assert all(w in label for w, label in zip(workdirs, curves))
  out = tmp_path / 'g.png'
  proc = run_module('seqlab.diagnose', '--workdir', ','.join(workdirs), '--out', str(out))
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert out.stat().st_size > 1000

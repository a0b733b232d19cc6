"""The vanishing-gradient picture: ||dLoss/dh_t|| against t.

  python -m seqlab.diagnose --workdir runs/adding_rnn,runs/adding_lstm,runs/adding_gru
  python -m seqlab.diagnose --cells rnn,lstm,gru --out init.png   # at initialisation

For a many-to-one model (one unidirectional layer, ``pool='last'``) the gradient
of the loss with respect to the carry at step t is the gradient of "run the rest
of the sequence from carry h, then the head and the loss" at h = h_t. Every t is
one lane of a ``vmap``: the carry at t is the final carry of the scan over the
first t + 1 steps (``lengths = t + 1``), and the rest of the sequence is the input
rolled left by t + 1 with ``lengths = T - t - 1`` -- so the one scan in
``seqlab.scan`` computes all of it. A tanh RNN's norms fall geometrically as t
moves away from the loss; an LSTM's and a GRU's stay within a few orders.
"""
import json
import os
import sys

from absl import flags
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from seqlab import cli
from seqlab import config as config_lib
from seqlab import losses
from seqlab import models
from seqlab import plots
from seqlab import scan
from seqlab import train
from seqlab import workdir as workdir_lib


def carry_gradient_norms(model, params, batch, spec) -> np.ndarray:
  """Mean over the batch of ||dLoss/d carry_t||_2 for t = 0 .. T-1: a [T] array.

  ``carry_t`` is the whole carry after step t (h, and c for an LSTM). With
  ``batch['lengths']`` a row counts at the steps it has (t < its length), and rows of
  ``example_weight`` 0 (an eval batch's padding) not at all; each row's gradient is
  that of its own loss term.
  """
  rec = model.recurrence(params) if isinstance(model, models.SequenceModel) else None
  if rec is None:
    raise ValueError('diagnose needs a one-layer unidirectional many-to-one model (pool=last); '
                     f'this run has a {type(model).__name__} that is not one')
  cell, cell_params = rec.cell, rec.cell_params
  xs = rec.features(batch['inputs'])
  batch_size, time = xs.shape[:2]
  lengths = jnp.asarray(batch.get('lengths', np.full((batch_size,), time)), jnp.int32)
  weight = jnp.asarray(batch.get('example_weight', np.ones((batch_size,))), jnp.float32)

  def loss_from(t, h):
    rest = jnp.roll(xs, -(t + 1), axis=1)
    final, _ = scan.run(cell, cell_params, rest, lengths=jnp.maximum(lengths - t - 1, 0),
                        initial_carry=h)
    outputs = rec.head(cell.output(final))
    loss, metrics = losses.loss_and_metrics(spec, outputs, batch)
    return loss * jax.lax.stop_gradient(metrics['count'])  # each row's own term

  def norm_at(t):
    prefix, _ = scan.run(cell, cell_params, xs, lengths=jnp.minimum(t + 1, lengths))
    grads = jax.grad(lambda h: loss_from(t, h))(prefix)
    # |g|^2: complex carries (LRU) count their magnitude
    sq = sum(jnp.sum(jnp.abs(g) ** 2, axis=-1) for g in jax.tree.leaves(grads))
    counts = (t < lengths) & (weight > 0)
    total = jnp.sum(jnp.where(counts, jnp.sqrt(sq), 0.0))
    return total / jnp.maximum(jnp.sum(counts), 1).astype(total.dtype)

  return np.asarray(jax.jit(jax.vmap(norm_at))(jnp.arange(time)))


def plot(curves: dict, path: str, title: str) -> None:
  """Writes the log-scale picture of {label: [T] norms} to ``path`` (PNG)."""
  plt = plots.pyplot()
  fig, ax = plt.subplots(figsize=(6.4, 4.0))
  for label, norms in curves.items():
    ax.semilogy(np.arange(len(norms)), np.maximum(norms, 1e-30), label=label)
  ax.set_xlabel('t (the loss is read after the last step)')
  ax.set_ylabel('||dLoss / d carry_t||')
  ax.set_title(title)
  ax.grid(True, which='both', alpha=0.3)
  ax.legend()
  fig.tight_layout()
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  plots.save(fig, path, dpi=120)


def norms_for_config(config, params=None, batch_size: int = 64) -> np.ndarray:
  """Gradient norms of ``config``'s model (fresh from its seed unless ``params``)."""
  task, model, optimizer = train.build(config)
  batch = task.batch('eval', 0, batch_size)
  if params is None:
    params = train.create_state(model, optimizer, batch, config.seed)['params']
  return carry_gradient_norms(model, params, batch, task.spec)


FLAGS = flags.FlagValues()  # our own: see seqlab.cli
_WORKDIR = flags.DEFINE_list('workdir', [], 'Runs to diagnose (their best checkpoints), '
                             'drawn in one picture.', flag_values=FLAGS)
_CELLS = flags.DEFINE_list('cells', ['rnn', 'lstm', 'gru'], 'Cells to compare (no --workdir).',
                           flag_values=FLAGS)
_LENGTH = flags.DEFINE_integer('length', 100, 'Adding-problem length T (no --workdir).',
                               flag_values=FLAGS)
_HIDDEN = flags.DEFINE_integer('hidden', 128, 'Hidden size (no --workdir).', flag_values=FLAGS)
# Without --workdir or --out: under runs/, like every run, not the current directory
# (once the repository's root, as untracked files).
DEFAULT_OUT = os.path.join('runs', 'diagnose', 'vanishing_gradients.png')
_OUT = flags.DEFINE_string('out', None, 'PNG path, its numbers beside it as .json (default '
                           f'<first workdir>/gradient_norms.png, else {DEFAULT_OUT}).',
                           flag_values=FLAGS)


def trained_curves(workdirs) -> tuple[dict, str]:
  """({label: [T] norms} of each run's best checkpoint, the first run's task name).
  Labels name the cell and step, and the workdir too where two would be the same."""
  runs = [train.load_run(w) for w in workdirs]
  labels = [f'{config.model.cell} (trained, step {step})' for config, *_, step in runs]
  curves = {}
  for workdir, label, (config, _, _, state, _) in zip(workdirs, labels, runs):
    if labels.count(label) > 1:
      label = f'{label[:-1]}, {workdir})'
    curves[label] = norms_for_config(config, state['params'])
  return curves, runs[0][0].task.name


def compare_cells(cells, length, hidden, seed=0) -> dict:
  """{cell: [T] norms} at initialisation on the adding problem of length T."""
  curves = {}
  for cell in cells:
    c = config_lib.base_config()
    c.task = ml_collections.ConfigDict(dict(name='adding', length=length))
    c.model.cell = cell
    c.model.hidden_size = hidden
    c.seed = seed
    curves[cell] = norms_for_config(c)
  return curves


def main(argv):
  del argv
  workdir_lib.quiet_logging()
  try:
    if _WORKDIR.value:
      curves, task_name = trained_curves(_WORKDIR.value)
      out = _OUT.value or os.path.join(_WORKDIR.value[0], 'gradient_norms.png')
      title = f'{task_name}: gradient norm through time'
    else:
      curves = compare_cells(_CELLS.value, _LENGTH.value, _HIDDEN.value)
      out = _OUT.value or DEFAULT_OUT
      title = f'Adding problem, T={_LENGTH.value}, at initialisation'
  except (ValueError, FileNotFoundError) as e:
    print(f'seqlab: {e}', file=sys.stderr)
    return 2
  for label, norms in curves.items():  # first: a failed write loses nothing
    print(f'{label:>20}: |dL/dh_0| / |dL/dh_T-1| = {norms[0] / norms[-1]:.3g}', flush=True)
  try:
    os.makedirs(os.path.dirname(out) or '.', exist_ok=True)
    plot(curves, out, title)
    with open(os.path.splitext(out)[0] + '.json', 'w') as f:
      json.dump({k: np.asarray(v).tolist() for k, v in curves.items()}, f)
  except OSError as e:
    blocker = workdir_lib.file_in_path(os.path.dirname(os.path.abspath(out)))
    reason = f'{blocker} is a file, not a directory' if blocker else e.strerror or str(e)
    print(f'seqlab: cannot write {out} ({reason}); give a writable --out', file=sys.stderr)
    return 2
  print(f'wrote {out} and {os.path.splitext(out)[0]}.json')
  return 0


if __name__ == '__main__':
  cli.run(main, FLAGS)

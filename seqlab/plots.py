"""PNG plots of runs and sweeps: learning curves, and a metric against a swept value.

matplotlib is optional (the ``plots`` and ``test`` extras); it is imported when a plot
is drawn, with the Agg backend (files only, no display).
"""
import json
import math
import os

from seqlab import workdir as workdir_lib


def pyplot():
  try:
    import matplotlib  # pylint: disable=g-import-not-at-top
  except ImportError:
    raise ImportError("seqlab's plots need matplotlib: pip install 'seqlab[plots]' "
                      '(or pip install matplotlib)') from None
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  return plt


def save(fig, path: str, dpi: int = 100) -> str:
  """Writes ``fig`` to ``path`` whole or not at all (a full disk keeps the old file,
  not a cut-off one), and closes it; returns ``path``."""
  root, ext = os.path.splitext(path)
  tmp = f'{root}.tmp{ext}'
  try:
    fig.savefig(tmp, dpi=dpi)
    os.replace(tmp, path)
  except OSError:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise
  finally:
    pyplot().close(fig)
  return path


def _series(rows, split, key):
  points = [(r['step'], r[key]) for r in rows if r['split'] == split and key in r]
  return [s for s, _ in points], [v for _, v in points]


def _positive(values) -> bool:
  return all(isinstance(v, (int, float)) and v > 0 and math.isfinite(v) for v in values)


def learning_curves(runs: dict, metric: str, path: str, title: str = '') -> str:
  """Train loss and eval ``metric`` against the step, one line per run.

  Args:
    runs: label -> the run's metrics.jsonl rows (``workdir.read_metrics``).
    metric: the eval metric of the right-hand panel.
    path: the PNG to write.
    title: the figure's title.

  Returns:
    ``path``.
  """
  plt = pyplot()
  fig, (ax_loss, ax_eval) = plt.subplots(1, 2, figsize=(12, 4.5))
  for label, rows in runs.items():
    line, = ax_loss.plot(*_series(rows, 'train', 'loss'), label=label, lw=1.2)
    ax_eval.plot(*_series(rows, 'eval', metric), marker='.', color=line.get_color(), lw=1.2)
  for ax, name in ((ax_loss, 'train loss'), (ax_eval, f'eval {metric}')):
    values = [v for line in ax.get_lines() for v in line.get_ydata()]
    if values and _positive(values):
      ax.set_yscale('log')
    ax.set_xlabel('step')
    ax.set_ylabel(name)
    ax.grid(alpha=0.3)
  if 1 < len(runs) <= 16:
    ax_loss.legend(fontsize=7)
  fig.suptitle(title)
  fig.tight_layout()
  return save(fig, path)


def metric_vs(xs: list, ys: dict, key: str, metric: str, path: str) -> str:
  """``metric`` against the swept value ``key``: a dot per point and the mean per value.

  Args:
    xs: the swept value of each point.
    ys: series label ('final', 'best') -> the metric of each point (None: missing).
    key: the swept config key (the x label); a log axis when values span >= 10x.
    metric: the y label.
    path: the PNG to write.
  """
  plt = pyplot()
  fig, ax = plt.subplots(figsize=(6, 4.5))
  numeric = _positive(xs)
  order = sorted(set(xs), key=lambda v: (v if numeric else str(v)))
  where = {v: i for i, v in enumerate(order)}
  for label, values in ys.items():
    pts = [(x if numeric else where[x], y) for x, y in zip(xs, values)
           if y is not None and math.isfinite(y)]
    if not pts:
      continue
    dots = ax.scatter(*zip(*pts), s=18, alpha=0.6, label=label)
    means = [(u, sum(y for x, y in pts if x == u) / sum(1 for x, _ in pts if x == u))
             for u in sorted({x for x, _ in pts})]
    ax.plot(*zip(*means), color=dots.get_facecolor()[0], lw=1)
  if numeric and max(xs) / min(xs) >= 10:
    ax.set_xscale('log')
  if not numeric:
    ax.set_xticks(range(len(order)), [str(v) for v in order])
  ax.set_xlabel(key)
  ax.set_ylabel(f'eval {metric}')
  ax.grid(alpha=0.3)
  ax.legend()
  fig.tight_layout()
  return save(fig, path)


def plot_run(workdir: str, metric: str | None = None) -> str:
  """Writes ``<workdir>/learning_curves.png`` for one run; returns its path.

  ``metric`` defaults to the run's train.best_metric, else its task's main metric.
  """
  if metric is None:
    with open(os.path.join(workdir, 'config.json')) as f:
      config = json.load(f)
    metric = config['train'].get('best_metric')
    if not metric:
      from seqlab import tasks  # pylint: disable=g-import-not-at-top
      metric = tasks.make_task(config['task'], config['seed']).spec.metric
  return learning_curves({os.path.basename(os.path.normpath(workdir)):
                          workdir_lib.read_metrics(workdir)},
                         metric, os.path.join(workdir, 'learning_curves.png'),
                         title=os.path.basename(os.path.normpath(workdir)))

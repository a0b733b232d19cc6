"""The table of a sweep: every point's overrides, final and best eval (validation)
metric, its test metric at the best-on-validation checkpoint and at the last step,
steps, time.

  python -m seqlab.report runs/adding_sweep

Prints the table, best point first (by the best eval metric of the finished points, in
the task's direction: lower mse, higher accuracy; the test columns never rank), and
writes into the sweep directory:
  report.md, report.csv   the table
  learning_curves.png     train loss and eval metric against the step, one line a point
  metric_vs_<key>.png     for a sweep over one key (seeds aside): the final and best
                          metric against the swept value, a dot per point
Reads sweep.json and each point's point.json and metrics.jsonl (seqlab.sweep writes them).
The wall time is summed over a point's attempts; points trained as one vmap population
each show the population's time.
"""
import csv
import dataclasses
import json
import math
import os
import sys

from seqlab import workdir as workdir_lib


@dataclasses.dataclass
class Row:
  """One point of the table; metric values are None where there are none yet."""
  name: str
  overrides: dict
  status: str
  error: str | None
  steps: int
  final: float | None
  best: float | None
  best_step: int | None
  wall_time: float | None
  test_best: float | None = None  # the test split at the best-on-validation checkpoint
  test_last: float | None = None  # ... and at the last step


def _read_json(path):
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)


def _finite(v) -> bool:
  return isinstance(v, (int, float)) and math.isfinite(v)


def _row(sweep_dir: str, entry: dict, metric: str, mode: str) -> Row:
  workdir = os.path.join(sweep_dir, entry['name'])
  point = _read_json(os.path.join(workdir, 'point.json')) or entry
  rows = workdir_lib.read_metrics(workdir)
  evals = [(r['step'], r[metric]) for r in rows if r['split'] == 'eval' and metric in r]
  good = [(s, v) for s, v in evals if _finite(v)]
  pick = min if mode == 'min' else max
  best_step, best = pick(good, key=lambda sv: sv[1]) if good else (None, None)
  test = {k: r.get(metric) for k, r in workdir_lib.logged_test(workdir).items()}
  return Row(name=entry['name'], overrides=point.get('overrides', entry.get('overrides', {})),
             status=point.get('status', 'pending'), error=point.get('error'),
             steps=max([r['step'] for r in rows if r['split'] == 'train'], default=0),
             final=evals[-1][1] if evals else None, best=best, best_step=best_step,
             wall_time=point.get('wall_time'), test_best=test.get('best'),
             test_last=test.get('last'))


def collect(sweep_dir: str) -> tuple[list[Row], dict]:
  """(a Row per point in sweep order, sweep.json's header: config, keys, metric, mode)."""
  header = _read_json(os.path.join(sweep_dir, 'sweep.json'))
  if header is None:
    raise FileNotFoundError(f'{sweep_dir} holds no sweep (no sweep.json); give the directory '
                            'a python -m seqlab.sweep wrote (its --workdir): python -m '
                            'seqlab.report runs/<experiment>_sweep')
  metric, mode = header['metric'], header['metric_mode']
  return [_row(sweep_dir, e, metric, mode) for e in header['points']], header


def rank(rows: list[Row], mode: str) -> list[Row]:
  """Done points by best metric (best first), then the others the same way."""
  sign = 1 if mode == 'min' else -1
  return sorted(rows, key=lambda r: (r.status != 'done', r.best is None,
                                     sign * r.best if r.best is not None else 0, r.name))


def _fmt(value, spec='.5g') -> str:
  return '' if value is None else format(value, spec)


def _value(value) -> str:
  return repr(value) if isinstance(value, float) else str(value)


def _first_clause(text: str, limit: int = 100) -> str:
  """'loss ... at step 2; the last good ...' -> 'loss ... at step 2' (the CSV has it all)."""
  text = text.split(';')[0].split('. ')[0]
  return text if len(text) <= limit else text[:limit - 3] + '...'


def table(rows: list[Row], keys: list[str], metric: str) -> tuple[list[str], list[list[str]]]:
  """(column names, formatted cells) of the report."""
  columns = [*keys, f'final {metric}', f'best {metric}', 'best step',
             f'test {metric} at best step', f'test {metric} at last step', 'steps',
             'wall time (s)', 'status']
  cells = []
  for r in rows:
    status = r.status if not r.error else f'{r.status}: {_first_clause(r.error)}'
    cells.append([*(_value(r.overrides.get(k, '')) for k in keys), _fmt(r.final),
                  _fmt(r.best), _fmt(r.best_step, 'd'), _fmt(r.test_best), _fmt(r.test_last),
                  str(r.steps), _fmt(r.wall_time, '.1f'),
                  status])
  return columns, cells


def markdown(rows: list[Row], header: dict, sweep_dir: str) -> str:
  metric, keys = header['metric'], header['keys']
  columns, cells = table(rows, keys, metric)
  better = 'lower' if header['metric_mode'] == 'min' else 'higher'
  esc = lambda s: s.replace('|', '\\|').replace('\n', ' ')
  lines = [f'# Sweep {sweep_dir}: {header["config"]}, eval {metric} ({better} is better), '
           'ranked on the eval (validation) split; the test columns are read once, at the end',
           '',
           '| ' + ' | '.join(columns) + ' |',
           '|' + '|'.join('---' if c == 'status' else '---:' for c in columns) + '|']
  lines += ['| ' + ' | '.join(esc(c) for c in row) + ' |' for row in cells]
  return '\n'.join(lines) + '\n'


def write_csv(rows: list[Row], header: dict, path: str) -> None:
  """Raw values, one column per swept key, for pandas and spreadsheets."""
  metric = header['metric']
  with open(path, 'w', newline='') as f:
    writer = csv.writer(f)
    writer.writerow(['name', *header['keys'], f'final_{metric}', f'best_{metric}', 'best_step',
                     f'test_{metric}_best', f'test_{metric}_last', 'steps', 'wall_time_s',
                     'status', 'error'])
    blank = lambda v: '' if v is None else v
    for r in rows:
      writer.writerow([r.name, *(r.overrides.get(k, '') for k in header['keys']),
                       blank(r.final), blank(r.best), blank(r.best_step), blank(r.test_best),
                       blank(r.test_last), r.steps,
                       '' if r.wall_time is None else r.wall_time, r.status, r.error or ''])


def plot(rows: list[Row], header: dict, sweep_dir: str) -> list[str]:
  """learning_curves.png, and metric_vs_<key>.png for a sweep over one key."""
  from seqlab import plots  # pylint: disable=g-import-not-at-top
  metric, keys = header['metric'], header['keys']
  varied = [k for k in keys if len({repr(r.overrides.get(k)) for r in rows}) > 1]
  label = lambda r: ','.join(f'{k}={_value(r.overrides.get(k))}' for k in varied) or r.name
  runs = {label(r): workdir_lib.read_metrics(os.path.join(sweep_dir, r.name)) for r in rows}
  paths = [plots.learning_curves(runs, metric, os.path.join(sweep_dir, 'learning_curves.png'),
                                 title=f'{sweep_dir}: {header["config"]}')]
  swept = [k for k in varied if k != 'seed'] or varied
  if len(swept) == 1:
    key = swept[0]
    have = [r for r in rows if key in r.overrides]
    paths.append(plots.metric_vs(
        [r.overrides[key] for r in have],
        {'final': [r.final for r in have], 'best': [r.best for r in have]}, key, metric,
        os.path.join(sweep_dir, f'metric_vs_{key}.png')))
  return paths


def report(sweep_dir: str) -> str:
  """Writes report.md, report.csv and the PNGs into ``sweep_dir``; returns the markdown."""
  rows, header = collect(sweep_dir)
  rows = rank(rows, header['metric_mode'])
  text = markdown(rows, header, sweep_dir)
  with open(os.path.join(sweep_dir, 'report.md'), 'w') as f:
    f.write(text)
  write_csv(rows, header, os.path.join(sweep_dir, 'report.csv'))
  try:
    plot(rows, header, sweep_dir)
  except ImportError as e:
    print(f'seqlab: no plots: {e}', file=sys.stderr)
  return text


def main(argv) -> int:
  if len(argv) == 2 and argv[1] in ('-h', '--help'):
    print(__doc__)
    return 0
  if len(argv) != 2:
    print('usage: python -m seqlab.report <sweep workdir>', file=sys.stderr)
    return 2
  try:
    print(report(argv[1]), end='')
  except FileNotFoundError as e:
    print(f'seqlab: {e}', file=sys.stderr)
    return 2
  return 0


if __name__ == '__main__':
  sys.exit(main(sys.argv))

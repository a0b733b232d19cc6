"""The sweep report: table order, markdown and CSV, PNGs; plot_run for one run."""
import csv
import json
import os
import sys

import pytest

from seqlab import plots
from seqlab import report
from conftest import load_config


def _write_point(sweep_dir, name, overrides, status, evals, *, error=None, steps=40,
                 metric='mse', wall=12.5, tests=None):
  """A point's sub-workdir as seqlab.sweep leaves it: point.json and metrics.jsonl
  (``tests``: the test values at its best and last checkpoint, logged at the end)."""
  workdir = os.path.join(sweep_dir, name)
  os.makedirs(workdir)
  with open(os.path.join(workdir, 'point.json'), 'w') as f:
    json.dump({'name': name, 'overrides': overrides, 'status': status, 'error': error,
               'wall_time': wall}, f)
  with open(os.path.join(workdir, 'metrics.jsonl'), 'w') as f:
    for i, value in enumerate(evals):
      step = (i + 1) * steps // len(evals)
      f.write(json.dumps({'step': step, 'split': 'train', 'loss': 1.0 / (i + 1)}) + '\n')
      f.write(json.dumps({'step': step, 'split': 'eval', metric: value, 'count': 100}) + '\n')
    for checkpoint, value in zip(('last', 'best'), tests or ()):
      f.write(json.dumps({'step': steps, 'split': 'test', metric: value, 'count': 100,
                          'checkpoint': checkpoint, 'checkpoint_step': steps}) + '\n')


def _write_sweep(sweep_dir, points, keys, metric='mse', mode='min'):
  with open(os.path.join(sweep_dir, 'sweep.json'), 'w') as f:
    json.dump({'config': 'experiments/adding.py:quick', 'overrides': {}, 'keys': keys,
               'metric': metric, 'metric_mode': mode,
               'points': [{'name': n, 'overrides': o, 'status': 'pending'} for n, o in points]},
              f)


def test_report_ranks_the_points_and_writes_the_files(tmp_path):
  d = str(tmp_path)
  points = [('optim.lr=0.001', {'optim.lr': 0.001}), ('optim.lr=0.01', {'optim.lr': 0.01}),
            ('optim.lr=0.1', {'optim.lr': 0.1}), ('optim.lr=1.0', {'optim.lr': 1.0}),
            ('optim.lr=10.0', {'optim.lr': 10.0})]
  _write_sweep(d, points, ['optim.lr'])
  _write_point(d, points[0][0], points[0][1], 'done', [0.3, 0.2])
  _write_point(d, points[1][0], points[1][1], 'done', [0.1, 0.05, 0.08],  # best before the end
               tests=(0.09, 0.06))
  _write_point(d, points[2][0], points[2][1], 'failed', [0.01, float('nan')], steps=20,
               error='loss or gradient is not finite at step 13; the last good checkpoint')
  _write_point(d, points[3][0], points[3][1], 'done', [0.15, 0.12],
               tests=(0.001, 0.001))  # the best test figures: they never rank
  # points[4] never ran: no sub-workdir.
  text = report.report(d)

  lines = [l for l in text.splitlines() if l.startswith('| ')]
  assert lines[0].split(' | ')[:3] == ['| optim.lr', 'final mse', 'best mse']
  order = [l.split(' | ')[0][2:] for l in lines[1:]]
  assert order == ['0.01', '1.0', '0.001', '0.1', '10.0']  # done by best, then the rest
  first = lines[1].split(' | ')
  # final, best, best step, test at the best step, test at the last step, steps, wall
  assert first[1:8] == ['0.08', '0.05', '26', '0.06', '0.09', '40', '12.5']
  assert lines[3].split(' | ')[4:6] == ['', '']  # no test rows: blank
  assert 'failed: loss or gradient is not finite at step 13 |' in lines[4]
  assert lines[5].endswith('| pending |')
  assert 'eval mse (lower is better)' in text
  assert open(os.path.join(d, 'report.md')).read() == text

  with open(os.path.join(d, 'report.csv')) as f:
    rows = list(csv.DictReader(f))
  assert [r['name'] for r in rows] == [points[i][0] for i in (1, 3, 0, 2, 4)]
  assert float(rows[0]['best_mse']) == 0.05 and float(rows[0]['final_mse']) == 0.08
  assert float(rows[0]['test_mse_best']) == 0.06 and float(rows[0]['test_mse_last']) == 0.09
  assert rows[3]['status'] == 'failed' and 'the last good checkpoint' in rows[3]['error']
  assert rows[3]['final_mse'] == 'nan' and float(rows[3]['best_mse']) == 0.01
  for png in ('learning_curves.png', 'metric_vs_optim.lr.png'):
    with open(os.path.join(d, png), 'rb') as f:
      assert f.read(8) == b'\x89PNG\r\n\x1a\n', png


def test_max_metric_ranks_highest_first_and_2d_sweeps_have_no_metric_plot(tmp_path):
  d = str(tmp_path)
  points = [(f'model.cell={c},optim.lr={lr}', {'model.cell': c, 'optim.lr': lr})
            for c in ('gru', 'lstm') for lr in (0.1, 0.2)]
  _write_sweep(d, points, ['model.cell', 'optim.lr'], metric='accuracy', mode='max')
  for (name, overrides), acc in zip(points, (0.5, 0.9, 0.7, 0.6)):
    _write_point(d, name, overrides, 'done', [acc], metric='accuracy')
  text = report.report(d)
  bests = [float(l.split(' | ')[3]) for l in text.splitlines()[4:]]
  assert bests == [0.9, 0.7, 0.6, 0.5] and '(higher is better)' in text
  assert os.path.exists(os.path.join(d, 'learning_curves.png'))
  assert not [f for f in os.listdir(d) if f.startswith('metric_vs_')]


def test_seed_is_set_aside_for_the_metric_plot(tmp_path):
  d = str(tmp_path)
  points = [(f'model.cell={c},seed={s}', {'model.cell': c, 'seed': s})
            for c in ('gru', 'lstm') for s in (0, 1)]
  _write_sweep(d, points, ['model.cell', 'seed'])
  for name, overrides in points:
    _write_point(d, name, overrides, 'done', [0.1])
  report.report(d)
  assert os.path.exists(os.path.join(d, 'metric_vs_model.cell.png'))


def test_report_cli_errors_and_missing_matplotlib(tmp_path, monkeypatch, capsys):
  assert report.main(['report', str(tmp_path)]) == 2
  err = capsys.readouterr().err
  assert 'no sweep.json' in err and '--workdir of' not in err  # report takes no --workdir
  assert 'python -m seqlab.report runs/' in err
  assert report.main(['report']) == 2
  d = str(tmp_path)
  _write_sweep(d, [('seed=0', {'seed': 0})], ['seed'])
  _write_point(d, 'seed=0', {'seed': 0}, 'done', [0.1])
  monkeypatch.setitem(sys.modules, 'matplotlib', None)  # as if not installed
  with pytest.raises(ImportError, match=r"pip install 'seqlab\[plots\]'"):
    plots.learning_curves({}, 'mse', str(tmp_path / 'x.png'))
  assert report.main(['report', d]) == 0
  captured = capsys.readouterr()
  assert 'seqlab: no plots' in captured.err and '| 0 |' in captured.out
  assert os.path.exists(os.path.join(d, 'report.csv'))
  assert not os.path.exists(os.path.join(d, 'learning_curves.png'))


def test_plot_run_writes_learning_curves_into_the_run(tmp_path):
  d = str(tmp_path)
  _write_point(d, 'run', {}, 'done', [0.3, 0.2])
  with open(os.path.join(d, 'run', 'config.json'), 'w') as f:
    f.write(load_config('adding').to_json())
  path = plots.plot_run(os.path.join(d, 'run'))  # metric from the task: mse
  assert path == os.path.join(d, 'run', 'learning_curves.png') and os.path.getsize(path) > 0


def test_a_full_disk_keeps_the_old_plot_and_the_finished_run(tmp_path, caplog):
  """The end-of-run plot on a full disk (its temporary file is /dev/full: ENOSPC):
  a warning, the previous learning_curves.png whole, no temporary file left."""
  from seqlab import train  # pylint: disable=g-import-not-at-top
  d = str(tmp_path)
  _write_point(d, 'run', {}, 'done', [0.3, 0.2])
  run = os.path.join(d, 'run')
  with open(os.path.join(run, 'config.json'), 'w') as f:
    f.write(load_config('adding').to_json())
  train.plot_learning_curves(run, 'mse')
  png = os.path.join(run, 'learning_curves.png')
  before = open(png, 'rb').read()
  tmp = os.path.join(run, 'learning_curves.tmp.png')
  os.symlink('/dev/full', tmp)
  _write_point(d, 'run2', {}, 'done', [0.3, 0.2, 0.1])  # a different picture
  os.replace(os.path.join(d, 'run2', 'metrics.jsonl'), os.path.join(run, 'metrics.jsonl'))
  train.plot_learning_curves(run, 'mse')  # no exception: the run itself is saved
  assert 'could not write' in caplog.text and 'No space left on device' in caplog.text
  assert open(png, 'rb').read() == before
  assert not os.path.lexists(tmp)
  train.plot_learning_curves(run, 'mse')  # the disk freed: drawn again
  assert open(png, 'rb').read() != before

"""Sweeps: many runs of one experiment, each point a normal run in its own sub-workdir.

  python -m seqlab.sweep --config experiments/adding.py:quick --workdir runs/adding_sweep \\
      [--sweep 'optim.lr=[0.001,0.003]' --sweep 'seed=[0,1,2]'] [--mode=processes|vmap] \\
      [--parallel N] [--shard i/n|auto] [--launcher=slurm [--wait] [--slurm_...]] \\
      [--config.train.steps=100 ...]
  python -m seqlab.report runs/adding_sweep

A point is a dict of config overrides, ``{'optim.lr': 0.001, 'seed': 1}``. The points
are the grid over the ``--sweep`` lists when there are any, else the experiment file's
``get_sweep(variant)``, built with ``grid``, ``product`` and ``random`` below;
``--config.k=v`` overrides apply to every point. Every point is checked (its keys
exist, its values have the config's types, its config validates, its task, model and
optimizer build) before anything runs; a bad point or zero points exits with code 2.

Point ``p`` runs in ``<workdir>/<point_name(p)>`` (e.g. ``optim.lr=0.001,seed=1``),
which holds a normal run's files plus ``point.json`` (its status: running, done,
failed with the error, interrupted; wall time) and, in process mode, ``log.txt``.
``<workdir>/sweep.json`` lists every point with its status. A point is done when its
checkpoint of step train.steps is written (a done point whose metrics.jsonl was lost
since stays done, with a warning that its history is lost); running the same command again skips done points
and resumes the others from their checkpoints (failed ones are tried again). A rerun
may raise train.steps or change the cadence of logs, evals and checkpoints
(``workdir.RESUMABLE``); a point that already ran with another config (other shared
``--config.k=v`` overrides, an edited experiment file) is refused with exit code 2.

  --mode=processes  each point is ``python -m seqlab.run`` in a subprocess, ``--parallel``
                    at a time, so a crash in one point cannot take the others down.
  --mode=vmap       points that differ only in ``population.VMAPPABLE`` values (seed, lr,
                    clip norm, weight decay, init options) train together in one compiled
                    program, in this process (seqlab.population). Points that differ in
                    anything else (a shape, dropout) form one population per program; a
                    point alone in its program falls back to a process. A message says so.
  --shard i/n       run only points j with j % n == i (0 <= i < n): n machines split the
                    sweep without talking to each other (e.g. a scheduler's job array);
                    ``auto``: i and n from SLURM_ARRAY_TASK_ID (less SLURM_ARRAY_TASK_MIN)
                    and SLURM_ARRAY_TASK_COUNT, in a job array of one's own.
  --launcher=slurm  submits the unfinished elements (``elements``) as one SLURM job array
                    (``seqlab.slurm``: the sbatch script in <workdir>/slurm/, resources
                    from the --slurm_* flags); ``--wait`` follows it to its end. Element
                    i runs this command with ``--element=i``.

Exit code 0 when every point of the shard is done (or saved after SIGTERM), 1 when one
failed, 2 for a bad sweep. With --launcher=slurm: 0 once submitted (with --wait, once
every point is done), 1 when --wait saw points fail or end unfinished, 2 for a request
SLURM refuses (one line naming the flag; nothing submitted).
"""
if __name__ == '__main__':  # first, before jax imports: a Ctrl-C at any moment stops it
  from seqlab import signals  # pylint: disable=g-import-not-at-top
  signals.exit_until_caught(' before any point started training; the same command starts '
                            'the sweep again.')
import ast
import collections
import dataclasses
import datetime
import hashlib
import itertools
import json
import math
import os
import re
import signal
import subprocess
import sys
import time
import traceback

from absl import flags
import ml_collections
from ml_collections import config_flags
import numpy as np

from seqlab import cli
from seqlab import config as config_lib
from seqlab import slurm
from seqlab import workdir as workdir_lib

MODES = ('processes', 'vmap')
PROGRESS_EVERY_S = 60  # off a terminal (a log file), the sweep's summary line once a minute


class SweepError(ValueError):
  """A sweep that cannot run: a missing key, a wrongly typed value, zero points."""


# --- Declaring points -----------------------------------------------------------------


def grid(axes: dict) -> list[dict]:
  """Every combination of the listed values, the last key varying fastest.

    grid({'optim.lr': [1e-3, 3e-3], 'seed': [0, 1]})
    -> [{'optim.lr': 0.001, 'seed': 0}, {'optim.lr': 0.001, 'seed': 1}, ...]  (4 points)

  An empty list gives zero points; ``grid({})`` is one point without overrides.
  """
  keys = list(axes)
  for k in keys:
    if isinstance(axes[k], (str, bytes)) or not hasattr(axes[k], '__iter__'):
      raise SweepError(f'grid: {k} needs a list of values, got {axes[k]!r}')
  return [dict(zip(keys, values)) for values in itertools.product(*(axes[k] for k in keys))]


def product(*sweeps: list[dict]) -> list[dict]:
  """Every combination of one point from each sweep, merged (keys must not repeat)."""
  points = [{}]
  for sweep in sweeps:
    merged = []
    for a, b in itertools.product(points, sweep):
      common = sorted(set(a) & set(b))
      if common:
        raise SweepError(f'product: {common[0]} is set by two of the sweeps')
      merged.append({**a, **b})
    points = merged
  return points


def _significant(value: float, digits: int) -> float:
  return float(f'{value:.{digits}g}')


def uniform(low: float, high: float, digits: int = 4):
  """A draw from U(low, high), rounded to ``digits`` significant digits (for ``random``)."""
  return lambda rng: _significant(rng.uniform(low, high), digits)


def log_uniform(low: float, high: float, digits: int = 4):
  """``exp(U(log low, log high))``, for scales such as learning rates (for ``random``)."""
  if not 0 < low < high:
    raise SweepError(f'log_uniform needs 0 < low < high, got {low}, {high}')
  return lambda rng: _significant(math.exp(rng.uniform(math.log(low), math.log(high))), digits)


def choice(values):
  """One of ``values``, uniformly (a list given to ``random`` means this)."""
  values = list(values)
  return lambda rng: values[int(rng.integers(len(values)))]


def random(n: int, axes: dict, seed: int = 0) -> list[dict]:
  """``n`` points, each key drawn from its distribution, reproducibly from ``seed``.

    random(8, {'optim.lr': log_uniform(1e-4, 1e-1), 'model.cell': ['lstm', 'gru']})

  Args:
    n: number of points.
    axes: key -> ``uniform``/``log_uniform``/``choice``, or a list (a choice).
    seed: the draws are those of ``np.random.default_rng(seed)``, point by point in
      the order of ``axes``.
  """
  rng = np.random.default_rng(seed)
  draws = {k: choice(v) if isinstance(v, (list, tuple)) else v for k, v in axes.items()}
  return [{k: draw(rng) for k, draw in draws.items()} for _ in range(n)]


# --- The command line's --sweep -------------------------------------------------------


def _literal(text: str):
  try:
    return ast.literal_eval(text)
  except (ValueError, SyntaxError):
    return text  # a bare word: model.cell=[lstm,gru]


def _split_top(text: str) -> list[str]:
  """Splits on the commas that are not inside brackets or quotes."""
  items, depth, quote, start = [], 0, None, 0
  for i, ch in enumerate(text):
    if quote:
      quote = None if ch == quote else quote
    elif ch in '\'"':
      quote = ch
    elif ch in '([{':
      depth += 1
    elif ch in ')]}':
      depth -= 1
    elif ch == ',' and depth == 0:
      items.append(text[start:i])
      start = i + 1
  return items + [text[start:]]


def parse_sweep_arg(text: str) -> tuple[str, list]:
  """``'optim.lr=[0.001,0.003]'`` -> ``('optim.lr', [0.001, 0.003])``; ``'seed=3'`` -> one value.

  Values are Python literals; words that are not (``[lstm,gru]``) are strings.
  """
  key, sep, values = (s.strip() for s in text.partition('='))
  if not sep or not key or not values:
    raise SweepError(f'--sweep {text!r}: expected key=[value,value,...]')
  if values.startswith('[') and values.endswith(']'):
    inner = values[1:-1].strip()
    return key, [_literal(v.strip()) for v in _split_top(inner)] if inner else []
  return key, [_literal(values)]


def cli_points(args: list[str]) -> list[dict]:
  """The grid over every ``--sweep key=[...]``, in the order given."""
  axes = {}
  for text in args:
    key, values = parse_sweep_arg(text)
    if key in axes:
      raise SweepError(f'--sweep names {key} twice')
    axes[key] = values
  return grid(axes)


# --- Checking points ------------------------------------------------------------------


@dataclasses.dataclass(eq=False)
class Point:
  """One run of the sweep: its overrides, its resolved config, its sub-workdir."""
  index: int
  overrides: dict
  config: ml_collections.ConfigDict
  name: str
  workdir: str


def _coerce(key: str, old, new):
  """``new`` converted to the type of the config's value ``old``; SweepError if it can't."""
  if isinstance(old, bool):
    ok = isinstance(new, bool)
  elif isinstance(old, int):
    ok = isinstance(new, int) and not isinstance(new, bool)
  elif isinstance(old, float):
    ok = isinstance(new, (int, float)) and not isinstance(new, bool)
    new = float(new) if ok else new
  elif isinstance(old, (tuple, list)):
    ok = isinstance(new, (tuple, list))
    new = tuple(new) if ok else new
  else:
    ok = old is None or isinstance(new, type(old))
  if not ok:
    raise SweepError(f'{key}={new!r} has type {type(new).__name__}; the config holds a '
                     f'{type(old).__name__} there ({old!r})')
  return new


def apply_overrides(config, overrides: dict, source: str = 'the experiment'):
  """A copy of ``config`` with ``overrides`` set; every key must exist already.

  Returns (config, overrides with the values converted to the config's types).
  """
  config = ml_collections.ConfigDict(config.to_dict())  # a copy; sections stay open
  normalized = {}
  for key, value in overrides.items():
    node, parts = config, key.split('.')
    for depth, part in enumerate(parts):
      if not isinstance(node, ml_collections.ConfigDict) or part not in node:
        where = '.'.join(parts[:depth])
        keys = ', '.join(sorted(node)) if isinstance(node, ml_collections.ConfigDict) else ''
        raise SweepError(f'{key} is not a key of the config of {source}; keys'
                         f'{" under " + where if where else ""}: {keys}')
      if depth < len(parts) - 1:
        node = node[part]
    if isinstance(node[parts[-1]], ml_collections.ConfigDict):
      raise SweepError(f'{key} is a section of the config; sweep one of its keys: '
                       f'{", ".join(sorted(node[parts[-1]]))}')
    normalized[key] = _coerce(key, node[parts[-1]], value)
    node[parts[-1]] = normalized[key]
  return config, normalized


def _format(value) -> str:
  """A value as names and --config flags spell it: 0.001, lstm, (0.5,0.75), (0.5,)."""
  if isinstance(value, (tuple, list)):
    return '(' + ','.join(_format(v) for v in value) + (',)' if len(value) == 1 else ')')
  return repr(value) if isinstance(value, float) else str(value)


def point_name(overrides: dict) -> str:
  """A stable, filesystem-safe name: ``optim.lr=0.001,seed=1`` (keys sorted)."""
  if not overrides:
    return 'base'
  name = ','.join(f'{k}={_format(overrides[k])}' for k in sorted(overrides))
  name = re.sub(r'[^A-Za-z0-9._=,+()-]', '_', name)
  if len(name) > 120:
    digest = hashlib.sha1(json.dumps(overrides, sort_keys=True, default=repr).encode())
    name = f'{name[:110]}-{digest.hexdigest()[:8]}'
  return name


def _check_builds(config, specs: dict) -> None:
  """Builds the point's task (once per distinct task config), model and optimizer."""
  from seqlab import models, optim, tasks  # pylint: disable=g-import-not-at-top
  key = json.dumps(config.task.to_dict(), sort_keys=True, default=repr)
  if key not in specs:
    specs[key] = tasks.make_task(config.task, config.seed).spec
  models.build_model(config.model, specs[key], config.get('seq2seq'))
  optim.make_optimizer(config.optim, config.train.steps)


def check_points(config, points: list[dict], workdir: str, source: str) -> list[Point]:
  """Every point applied to ``config`` and validated, before anything runs.

  Raises SweepError for zero points, a missing key, a wrong type, a repeated point, or
  a point whose config does not validate or whose task, model or optimizer fails to build.
  """
  if not points:
    raise SweepError('the sweep has zero points; give --sweep key=[v1,v2,...] or a '
                     'get_sweep that returns a list of override dicts')
  checked, names, specs = [], {}, {}
  for i, overrides in enumerate(points):
    if not isinstance(overrides, dict):
      raise SweepError(f'point {i} is {overrides!r}; a point is a dict of overrides')
    point_config, normalized = apply_overrides(config, overrides, source)
    name = point_name(normalized)
    if name in names:
      raise SweepError(f'point {i} ({name}) repeats point {names[name]}')
    names[name] = i
    try:
      config_lib.validate(point_config)
      _check_builds(point_config, specs)
    except ValueError as e:  # ConfigError, or a task's, model's or optimizer's check
      raise SweepError(f'point {name}: {e}') from None
    checked.append(Point(i, normalized, point_config, name, os.path.join(workdir, name)))
  return checked


def parse_shard(text: str, env=None) -> tuple[int, int]:
  """``'2/8'`` -> (2, 8): this machine's index i (0 <= i < n) and the machine count n.

  ``'auto'``: (SLURM_ARRAY_TASK_ID - SLURM_ARRAY_TASK_MIN, SLURM_ARRAY_TASK_COUNT) of
  ``env`` (os.environ), an element of a contiguous job array (``--array=0-7``).
  """
  env = os.environ if env is None else env
  if (text or '').strip() == 'auto':
    keys = ('SLURM_ARRAY_TASK_ID', 'SLURM_ARRAY_TASK_COUNT')
    if not all(env.get(k, '').isdigit() for k in keys):
      raise SweepError('--shard=auto reads SLURM_ARRAY_TASK_ID and SLURM_ARRAY_TASK_COUNT, '
                       'which only a SLURM job array sets; give --shard i/n elsewhere')
    text = (f'{int(env["SLURM_ARRAY_TASK_ID"]) - int(env.get("SLURM_ARRAY_TASK_MIN", 0))}'
            f'/{env["SLURM_ARRAY_TASK_COUNT"]}')
  match = re.fullmatch(r'\s*(\d+)\s*/\s*(\d+)\s*', text or '')
  if not match or not int(match[1]) < int(match[2]):
    raise SweepError(f'--shard {text!r}: expected i/n with 0 <= i < n, e.g. 0/4')
  return int(match[1]), int(match[2])


def shard(points: list, index: int, count: int) -> list:
  """The points of machine ``index`` of ``count``: every ``count``-th, from ``index``."""
  return points[index::count]


def elements(points: list, mode: str) -> list[list]:
  """The launcher's array elements: one point each, or in ``--mode=vmap`` one population
  each (``plan_vmap``: a point alone in its program is an element alone), in a fixed
  order, so that ``--element=i`` names the same points at submission and in the job."""
  if mode != 'vmap':
    return [[p] for p in points]
  together, alone, _ = plan_vmap(points)
  return together + [[p] for p in alone]


# --- State ------------------------------------------------------------------------------


def _write_json(path: str, obj) -> None:
  tmp = f'{path}.tmp{os.getpid()}'
  with open(tmp, 'w') as f:
    json.dump(obj, f, indent=2, sort_keys=True, default=repr)
  os.replace(tmp, path)


def read_point(workdir: str) -> dict:
  """``<sub-workdir>/point.json``, or {} before the point first ran."""
  path = os.path.join(workdir, 'point.json')
  if not os.path.exists(path):
    return {}
  with open(path) as f:
    return json.load(f)


def is_done(point: Point) -> bool:
  """Whether the point's checkpoint of its last step (``train.steps``) is written.

  Decided by the checkpoint, not by metrics.jsonl: the last step's metrics are written
  before its checkpoint (whose save may fail), and a log lost since (``history_lost``)
  leaves a finished run finished.
  """
  ckpts = os.path.join(point.workdir, 'checkpoints')
  return any(d.isdigit() and int(d) >= point.config.train.steps
             for d in (os.listdir(ckpts) if os.path.isdir(ckpts) else ()))


def history_lost(point: Point) -> bool:
  """Whether a done point's metrics.jsonl lacks its last step's train row (deleted,
  cut short or unreadable): its learning curve and final eval are gone."""
  try:
    rows = workdir_lib.read_metrics(point.workdir)
  except workdir_lib.WorkdirError:
    return True
  return not any(r['split'] == 'train' and r['step'] >= point.config.train.steps for r in rows)


def config_changes(point: Point) -> list[str]:
  """How the config the point's run was started with differs from the one the sweep
  asks for now (``workdir.config_changes``, ``workdir.RESUMABLE`` keys left out)."""
  return workdir_lib.config_changes(point.workdir, point.config, ignore=workdir_lib.RESUMABLE)


def check_unchanged(points: list[Point]) -> None:
  """SweepError for the first point whose sub-workdir holds a run of another config
  (the shared --config.k=v overrides or the experiment file changed since)."""
  for point in points:
    changed = config_changes(point)
    if changed:
      raise SweepError(f'point {point.name} was run with another config '
                       f'({workdir_lib.show_changes(changed, 3)}); give another --workdir, '
                       f'or delete {point.workdir} to rerun it')


def check_same_points(workdir: str, points: list[Point]) -> None:
  """SweepError when ``workdir`` holds a sweep with points (run or started) that this
  one lacks: its sweep.json, and so the report, would silently leave them out. An
  extended grid (every earlier point still in it) is fine."""
  try:
    with open(os.path.join(workdir, 'sweep.json')) as f:
      earlier = [p['name'] for p in json.load(f)['points']]
  except (OSError, ValueError, KeyError, TypeError):
    return  # no sweep there yet (or no readable summary: the points' own files remain)
  names = {p.name for p in points}
  dropped = [n for n in earlier if n not in names and os.path.isdir(os.path.join(workdir, n))]
  if dropped:
    raise SweepError(f'{workdir} holds a sweep with {len(dropped)} point(s) this one lacks '
                     f'({", ".join(dropped[:3])}{", ..." if len(dropped) > 3 else ""}); its '
                     'sweep.json and report would leave them out. Give another --workdir, or '
                     'a grid that includes them (extending one is fine)')


def final_metrics(workdir: str) -> dict:
  evals = [r for r in workdir_lib.read_metrics(workdir) if r['split'] == 'eval']
  return evals[-1] if evals else {}


class State:
  """Every point's status: its own ``point.json`` and the summary ``sweep.json``."""

  def __init__(self, workdir: str, points: list[Point], header: dict):
    self.workdir, self.points, self.header = workdir, points, header
    self.status = {p.name: read_point(p.workdir) for p in points}

  def update(self, point: Point, status: str, mode: str, error: str | None = None,
             wall_time: float = 0.0) -> None:
    old = self.status.get(point.name, {})
    new = {
        'name': point.name, 'overrides': point.overrides, 'status': status, 'error': error,
        'mode': mode, 'attempts': old.get('attempts', 0) + (status == 'running'),
        'wall_time': old.get('wall_time', 0.0) + wall_time,
        'updated': datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds'),
    }
    os.makedirs(point.workdir, exist_ok=True)
    _write_json(os.path.join(point.workdir, 'point.json'), new)
    self.status[point.name] = new
    self.write()

  def write(self, reread: bool = False) -> None:
    """Writes sweep.json; ``reread`` picks up what other shards wrote meanwhile."""
    if reread:
      self.status = {p.name: read_point(p.workdir) for p in self.points}
    rows = []
    for p in self.points:
      s = self.status.get(p.name) or {}
      rows.append({'name': p.name, 'overrides': p.overrides,
                   'status': s.get('status', 'pending'), 'error': s.get('error'),
                   'wall_time': s.get('wall_time')})
    _write_json(os.path.join(self.workdir, 'sweep.json'), {**self.header, 'points': rows})


def _finish(state: State, point: Point, mode: str, wall: float, error: str | None,
            interrupted: bool, say=print) -> None:
  """Records how an attempt ended and prints (``say``) one line."""
  if is_done(point):
    status, error = 'done', None
    result = ', '.join(f'{k}={v:.5g}' for k, v in final_metrics(point.workdir).items()
                       if k not in ('step', 'split', 'count'))
  elif interrupted:
    status, result = 'interrupted', 'saved; run again to resume'
  else:
    status, error = 'failed', error or 'stopped before train.steps'
    result = error
  state.update(point, status, mode, error, wall)
  say(f'[{status}] {point.name} ({wall:.1f} s): {result}')


# --- Process mode -----------------------------------------------------------------------


def run_command(config_arg: str, overrides: dict, workdir: str) -> list[str]:
  """The ``python -m seqlab.run`` command line of one point."""
  return [sys.executable, '-m', 'seqlab.run', '--config', config_arg, '--workdir', workdir,
          *(f'--config.{k}={_format(v)}' for k, v in overrides.items())]


def last_step(workdir: str) -> int | None:
  """The step of the last row of ``workdir``'s metrics.jsonl (only its end is read),
  or None before the first."""
  try:
    with open(os.path.join(workdir, 'metrics.jsonl'), 'rb') as f:
      f.seek(max(0, f.seek(0, os.SEEK_END) - 4096))
      lines = f.read().splitlines()
  except OSError:
    return None
  for line in reversed(lines):
    try:
      return int(json.loads(line)['step'])
    except (ValueError, KeyError, TypeError):  # a torn last line, or the start of one
      continue
  return None


def summary(state: State, points: list[Point], running: list[Point]) -> str:
  """'sweep: 1 of 4 done, 2 running (seed=1 step 120/400, seed=2 starting), 0 failed'."""
  statuses = [state.status.get(p.name, {}).get('status') for p in points]
  steps = ', '.join(f'{p.name} ' + (f'step {s}/{p.config.train.steps}'
                                    if (s := last_step(p.workdir)) is not None else 'starting')
                    for p in running)
  return (f'sweep: {statuses.count("done")} of {len(points)} done, {len(running)} running'
          + (f' ({steps})' if steps else '') + f', {statuses.count("failed")} failed')


def _error_line(log_path: str) -> str:
  """The reason a run failed: its last 'seqlab:' line, else its last line."""
  with open(log_path, errors='replace') as f:
    lines = [line.strip() for line in f.readlines()[-200:] if line.strip()]
  ours = [line for line in lines if line.startswith('seqlab:')]
  return ((ours or lines or ['no output'])[-1])[:500]


# A point's exit codes after the sweep passed it a signal: saved at its next step (0),
# stopped before its training started (``seqlab.signals``: 128 + the signal), or ended
# by the signal before Python ran a line of it.
STOPPED_CODES = (0, *(c for s in (signal.SIGTERM, signal.SIGINT) for c in (128 + s, -s)))


class _Stop(cli.Interrupt):
  """``cli.Interrupt`` that also passes SIGTERM on to the running points' processes, so
  each saves its checkpoint and exits while the sweep starts no more."""

  def __init__(self):
    super().__init__()
    self.procs = []

  def _handle(self, signum, frame):
    super()._handle(signum, frame)
    for proc in self.procs:
      if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)


def run_processes(points: list[Point], state: State, config_arg: str, base_overrides: dict,
                  parallel: int) -> bool:
  """Runs ``points`` as subprocesses, ``parallel`` at a time; True if interrupted."""
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env = dict(os.environ, PYTHONPATH=os.pathsep.join(
      p for p in (root, os.environ.get('PYTHONPATH')) if p))
  if parallel > 1:  # several runs share an accelerator: allocate memory as needed
    env.setdefault('XLA_PYTHON_CLIENT_PREALLOCATE', 'false')
  queue, running = collections.deque(points), {}
  progress = workdir_lib.Progress(len(points), 0, stream=sys.stdout, every=PROGRESS_EVERY_S)
  shown, changed = -math.inf, True
  with _Stop() as stop:
    stop.training_started()  # a signal now goes to the points, which save or stop
    while (queue and not stop.signal) or running:  # once stopped, only wait for the running
      while queue and len(running) < parallel and not stop.signal:
        point = queue.popleft()
        os.makedirs(point.workdir, exist_ok=True)
        log = open(os.path.join(point.workdir, 'log.txt'), 'a')
        command = run_command(config_arg, {**base_overrides, **point.overrides},
                              os.path.abspath(point.workdir))
        log.write(f'$ {" ".join(command)}\n')
        log.flush()
        state.update(point, 'running', 'processes')
        progress.message(f'[start] {point.name}')
        changed = True
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
        stop.procs.append(proc)
        running[proc] = (point, time.perf_counter(), log)
      for proc in [p for p in running if p.poll() is not None]:
        point, t0, log = running.pop(proc)
        log.close()
        stop.procs.remove(proc)
        rc = proc.returncode
        error = (f'killed by {signal.Signals(-rc).name}' if rc < 0 else
                 _error_line(log.name) if rc > 0 else None)
        _finish(state, point, 'processes', time.perf_counter() - t0, error,
                interrupted=stop.signal is not None and rc in STOPPED_CODES,
                say=progress.message)
        changed = True
      if changed or time.perf_counter() - shown >= 1.0:  # reads the points' metrics.jsonl
        line = summary(state, points, [p for p, _, _ in running.values()])
        progress.show(line, sum(state.status.get(p.name, {}).get('status') == 'done'
                                for p in points) / max(len(points), 1), force=changed)
        shown, changed = time.perf_counter(), False
      time.sleep(0.05)
  progress.close()
  return stop.signal is not None


# --- vmap mode ---------------------------------------------------------------------------


def plan_vmap(points: list[Point]) -> tuple[list[list[Point]], list[Point], str | None]:
  """(populations of >= 2 points, points left to processes, a message if any are)."""
  from seqlab import population  # pylint: disable=g-import-not-at-top
  groups = [[points[i] for i in g] for g in population.partition([p.config for p in points])]
  together = [g for g in groups if len(g) > 1]
  alone = [g[0] for g in groups if len(g) == 1]
  if len(groups) <= 1 or not points:
    return together, alone, None
  reasons = population.split_reasons([p.config for p in points])
  message = (f'--mode=vmap: points that differ in {", ".join(reasons)} cannot share one '
             f'compiled program (vmappable: {", ".join(population.VMAPPABLE)}); '
             f'{len(together)} population(s) of {"+".join(str(len(g)) for g in together) or 0} '
             f'points, and {len(alone)} point(s) fall back to processes.')
  return together, alone, message


class _Abort(BaseException):
  """SIGTERM/SIGINT outside a population's loop (which saves and returns by itself);
  a BaseException, like KeyboardInterrupt, so that no ``except Exception`` stops it."""


def _abort(signum, frame):
  del frame
  raise _Abort(signal.Signals(signum).name)


def run_vmap(points: list[Point], state: State, config_arg: str, base_overrides: dict,
             parallel: int) -> bool:
  """Trains each population in this process, then the rest as processes; True if
  interrupted."""
  from seqlab import population  # pylint: disable=g-import-not-at-top
  together, alone, message = plan_vmap(points)
  if message:
    print(f'seqlab.sweep: {message}', flush=True)
  old = {s: signal.signal(s, _abort) for s in (signal.SIGTERM, signal.SIGINT)}
  try:
    for group in together:
      for p in group:
        state.update(p, 'running', 'vmap')
      names = ', '.join(p.name for p in group)
      print(f'[start] population of {len(group)}: '
            f'{names if len(names) < 300 else names[:297] + "..."}', flush=True)
      t0 = time.perf_counter()
      try:
        results = population.train_population([p.config for p in group],
                                               [p.workdir for p in group])
      except _Abort:
        results = [None] * len(group)  # before or after the loop: nothing left to save
      except (workdir_lib.WorkdirError, workdir_lib.WriteError) as e:  # one line: a busy
        # or unusable point workdir, a full disk (points with no final checkpoint fail)
        print(f'seqlab: {e}', file=sys.stderr, flush=True)
        results = [str(e)] * len(group)
      except Exception as e:  # pylint: disable=broad-except
        traceback.print_exc()
        results = [f'{type(e).__name__}: {str(e).strip().splitlines()[0][:500]}'] * len(group)
      wall = time.perf_counter() - t0
      for p, r in zip(group, results):
        _finish(state, p, 'vmap', wall, r if isinstance(r, str) else None,
                interrupted=r is None)
      if any(r is None for r in results):
        return True
  finally:
    for s, handler in old.items():
      signal.signal(s, handler)
  return run_processes(alone, state, config_arg, base_overrides, parallel)


# --- SLURM job arrays (seqlab.slurm) -----------------------------------------------------

POLL_S = 2.0  # --wait reads squeue and the points' files this often


def element_state(point: Point, status: str | None, queue_state: str | None) -> str:
  """One point of a submitted sweep: done, running, pending (its element queued or
  requeued), failed, or unfinished (its element ended first: cancelled, timed out)."""
  if is_done(point):
    return 'done'
  if queue_state == 'RUNNING':
    return 'running' if status == 'running' else 'pending'  # vmap: the rest of a population
  if queue_state:
    return 'pending'
  return 'failed' if status == 'failed' else 'unfinished'


def slurm_summary(job: str, counts: collections.Counter, total: int) -> str:
  """'slurm job 12: 1 of 4 done, 2 running, 1 pending, 0 failed'."""
  return (f'slurm job {job}: {counts["done"]} of {total} done, {counts["running"]} running, '
          f'{counts["pending"]} pending, {counts["failed"]} failed'
          + (f', {counts["unfinished"]} unfinished' if counts['unfinished'] else ''))


def follow(job: str, parts: list[list[Point]]) -> collections.Counter:
  """Shows the progress of ``job`` (element i runs ``parts[i]``) until none of it is
  queued; returns the points' final states (``element_state``)."""
  total = sum(len(part) for part in parts)
  progress = workdir_lib.Progress(total, 0, stream=sys.stdout, every=PROGRESS_EVERY_S)
  shown = None
  while True:
    queue = slurm.queued(job)
    counts = collections.Counter(
        element_state(p, read_point(p.workdir).get('status'), queue.get(i))
        for i, part in enumerate(parts) for p in part)
    line = slurm_summary(job, counts, total)
    progress.show(line, counts['done'] / total, force=line != shown)
    shown = line
    if not queue:
      progress.close()
      return counts
    time.sleep(POLL_S)


def launch_slurm(points: list[Point], workdir: str, header: dict, *, mode: str, command:
                 list[str], resources, wait: bool) -> int:
  """Submits the unfinished elements of the sweep as one job array (``seqlab.slurm``),
  unless the last submission still has elements queued; with ``wait``, follows it.

  Returns the exit code: 0 once submitted (with ``wait``: when every point is done), 1 when
  ``wait`` saw points fail or end unfinished, 2 for a request SLURM refuses.
  """
  parts = elements(points, mode)
  log_dir = os.path.join(workdir, 'slurm')
  path, job_file = os.path.join(log_dir, slurm.SCRIPT), os.path.join(log_dir, 'job.json')
  os.makedirs(log_dir, exist_ok=True)
  state = State(workdir, points, header)
  state.write()
  job = None
  if os.path.exists(job_file):
    with open(job_file) as f:
      earlier = json.load(f)
    if slurm.queued(earlier['job']):
      job = earlier['job']
      print(f'sweep: SLURM job {job} of this sweep is still queued or running; not '
            'submitting again' + ('; following it' if wait else ''), flush=True)
  if job is None:
    todo = [i for i, part in enumerate(parts) if not all(is_done(p) for p in part)]
    print(f'sweep: {len(points)} points in {workdir}; {len(parts) - len(todo)} of '
          f'{len(parts)} array elements done, {len(todo)} to submit ({mode})', flush=True)
    if not todo:
      return 0
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    name = 'seqlab-sweep-' + os.path.basename(os.path.abspath(workdir))
    text = slurm.script(command, indices=todo, resources=resources, name=name,
                        log_dir=os.path.abspath(log_dir), cwd=os.getcwd(), pythonpath=root)
    with open(path, 'w') as f:
      f.write(text)
    try:
      slurm.check(path, resources)
      job = slurm.submit(path)
    except slurm.SlurmError as e:
      print(f'seqlab: bad SLURM request, nothing submitted: {e}', file=sys.stderr, flush=True)
      return 2
    _write_json(job_file, {'job': job, 'mode': mode, 'elements': {
        i: [p.name for p in parts[i]] for i in todo}})
    print(f'sweep: submitted SLURM job {job} (array {slurm.array_spec(todo)}, script {path}, '
          f'logs {log_dir}/{job}_<i>.out)'
          + ('' if wait else f'; squeue -j {job} follows it; the same command with --wait '
             'too, or resubmits what is unfinished once it ended'), flush=True)
  if not wait:
    return 0
  counts = follow(job, parts)
  state.write(reread=True)
  unfinished = counts['failed'] + counts['unfinished']
  print(f'sweep: {counts["done"]} done, {counts["failed"]} failed, {counts["unfinished"]} '
        f'unfinished. Table: python -m seqlab.report {workdir}'
        + (f'; the same command resubmits the {unfinished} unfinished point(s) (logs in '
           f'{log_dir})' if unfinished else ''), flush=True)
  return 1 if unfinished else 0


# --- The command line --------------------------------------------------------------------

FLAGS = flags.FlagValues()  # our own, so importing this module defines no global flags
config_flags.DEFINE_config_file('config', None, 'Experiment file[:variant].',
                                flag_values=FLAGS, lock_config=True)
flags.DEFINE_string('workdir', None, 'Sweep directory (default runs/<experiment>_sweep).',
                    flag_values=FLAGS)
flags.DEFINE_multi_string('sweep', [], "A grid axis, key=[v1,v2,...]; replaces the file's "
                          'get_sweep.', flag_values=FLAGS)
flags.DEFINE_enum('mode', 'processes', MODES, 'How the points run.', flag_values=FLAGS)
flags.DEFINE_integer('parallel', 1, 'Processes at a time.', lower_bound=1, flag_values=FLAGS)
flags.DEFINE_string('shard', '0/1', "i/n: run every n-th point from the i-th; 'auto': i, n "
                    'from the SLURM job array.', flag_values=FLAGS)
flags.DEFINE_integer('element', None, 'Run only array element i of --launcher (its script '
                     'passes it).', lower_bound=0, flag_values=FLAGS)
flags.DEFINE_enum('launcher', 'local', ('local', 'slurm'), 'local: run here; slurm: submit '
                  'one SLURM job array.', flag_values=FLAGS)
flags.DEFINE_bool('wait', False, '--launcher=slurm: follow the array until it ends.',
                  flag_values=FLAGS)
flags.DEFINE_string('slurm_partition', None, 'SLURM partition (default: the cluster\'s).',
                    flag_values=FLAGS)
flags.DEFINE_string('slurm_time', None, 'Time limit per element, e.g. 2:00:00.',
                    flag_values=FLAGS)
flags.DEFINE_integer('slurm_cpus_per_task', 1, 'CPUs per element.', lower_bound=1,
                     flag_values=FLAGS)
flags.DEFINE_integer('slurm_gpus_per_task', 0, 'GPUs per element.', lower_bound=0,
                     flag_values=FLAGS)
flags.DEFINE_string('slurm_mem', None, 'Memory per element, e.g. 16G.', flag_values=FLAGS)
flags.DEFINE_integer('slurm_max_concurrent', 0, 'At most this many elements at once (the '
                     "array's %N; 0: no limit).", lower_bound=0, flag_values=FLAGS)


def _file_points(config_arg: str) -> list:
  """The experiment file's ``get_sweep(variant)``."""
  path, _, variant = config_arg.partition(':')
  module = config_lib.load_file(path, 'seqlab_sweep_experiment')
  if not hasattr(module, 'get_sweep'):
    raise SweepError(f'{path} has no get_sweep(arg); give the points with --sweep '
                     'key=[v1,v2,...]')
  try:
    points = module.get_sweep(variant or None)
  except (ValueError, TypeError, KeyError) as e:
    raise SweepError(f'{path}: get_sweep({variant or None!r}) failed: {e}') from None
  return list(points)


def _metric(config) -> tuple[str, str]:
  """(the eval metric that ranks the points, 'min' or 'max')."""
  from seqlab import losses, tasks  # pylint: disable=g-import-not-at-top
  return losses.best_metric(tasks.make_task(config.task, config.seed).spec,
                            config.train.best_metric)


def _points(config_arg: str, base, base_overrides: dict, workdir: str) -> list[Point]:
  """The checked points of the --sweep flags, else of the file's get_sweep."""
  raw = cli_points(FLAGS.sweep) if FLAGS.sweep else _file_points(config_arg)
  both = sorted(set(base_overrides) & set().union(*raw)) if raw else []
  if both:
    raise SweepError(f'{both[0]} is both swept and set with --config.{both[0]}')
  return check_points(base, raw, workdir, config_arg)


def _part(points: list[Point]) -> tuple[list[Point], str]:
  """The points this process runs (--shard or --element) and a name for them."""
  if FLAGS.launcher == 'slurm' and (FLAGS['shard'].present or FLAGS.element is not None):
    raise SweepError('--launcher=slurm makes its own array elements; leave out --shard and '
                     '--element')
  given = [f'--{k}' for k in ('wait', *(f'slurm_{f}' for f in slurm.FLAG_KEYS))
           if FLAGS[k].present]
  if FLAGS.launcher != 'slurm' and given:
    raise SweepError(f'{given[0]} is for --launcher=slurm; add it, or leave {given[0]} out')
  if FLAGS.element is not None:
    parts = elements(points, FLAGS.mode)
    if FLAGS.element >= len(parts):
      raise SweepError(f'--element={FLAGS.element}: the sweep has {len(parts)} elements in '
                       f'--mode={FLAGS.mode}')
    return parts[FLAGS.element], f'element {FLAGS.element}'
  index, count = parse_shard(FLAGS.shard)
  return shard(points, index, count), (f'shard {index}/{count}' if count > 1 else '')


def _element_command(config_arg: str, base_overrides: dict, workdir: str) -> list[str]:
  """This sweep's command line, for its SLURM array elements (``--element`` follows)."""
  return [sys.executable, '-m', 'seqlab.sweep', '--config', config_arg,
          '--workdir', os.path.abspath(workdir), '--mode', FLAGS.mode,
          *(f'--sweep={s}' for s in FLAGS.sweep),
          *(f'--config.{k}={_format(v)}' for k, v in base_overrides.items())]


def run_sweep(points: list[Point], workdir: str, header: dict, *, mode: str, parallel: int,
              mine: list[Point] | None = None, part: str = '') -> int:
  """Runs the unfinished ones of ``mine`` (a shard or an element, named by ``part``;
  default every point); returns the exit code (1 if any failed)."""
  os.makedirs(workdir, exist_ok=True)
  state = State(workdir, points, header)
  state.write()
  mine = points if mine is None else mine
  todo = [p for p in mine if not is_done(p)]
  for p in mine:
    if p not in todo and state.status.get(p.name, {}).get('status') != 'done':
      state.update(p, 'done', mode)  # finished, but its point.json missed it
    if p not in todo and history_lost(p):
      print(f'seqlab.sweep: warning: {p.name} is done (its checkpoint of step '
            f'{p.config.train.steps} is written) but its metrics.jsonl lost its history: no '
            'learning curve or final eval in the report; python -m seqlab.evaluate '
            f'--workdir {p.workdir} recomputes the final metrics', file=sys.stderr, flush=True)
  print(f'sweep: {len(points)} points in {workdir}'
        + (f', {part}: {len(mine)}' if part else '')
        + f'; {len(mine) - len(todo)} done, {len(todo)} to run ({mode}'
        + (f', {parallel} at a time' if mode == 'processes' else '') + ')', flush=True)
  runner = run_vmap if mode == 'vmap' else run_processes
  interrupted = runner(todo, state, header['config'], header['overrides'], parallel)
  state.write(reread=True)
  counts = collections.Counter(state.status.get(p.name, {}).get('status', 'pending')
                               for p in mine)
  print('sweep: ' + ', '.join(f'{n} {s}' for s, n in sorted(counts.items()))
        + f'. Table: python -m seqlab.report {workdir}', flush=True)
  if interrupted:
    print('sweep: interrupted; run the same command to resume.', flush=True)
    return 0
  return 1 if counts.get('failed') else 0


def main(argv) -> int:
  workdir_lib.quiet_logging()  # first: jax's probe for a TPU logs a libtpu.so line at INFO
  if len(argv) > 1:
    print(f'seqlab: unexpected arguments: {" ".join(argv[1:])}', file=sys.stderr)
    return 2
  if not FLAGS['config'].present:
    print('seqlab: --config experiments/<name>.py[:variant] is required', file=sys.stderr)
    return 2
  config_arg = config_flags.get_config_filename(FLAGS['config'])
  base_overrides = dict(config_flags.get_override_values(FLAGS['config']))
  stem = os.path.splitext(os.path.basename(config_arg.partition(':')[0]))[0]
  variant = config_arg.partition(':')[2]
  workdir = FLAGS.workdir or os.path.join(
      'runs', stem + (f'_{variant}' if variant else '') + '_sweep')
  try:  # every check before anything runs
    points = _points(config_arg, FLAGS.config, base_overrides, workdir)
    mine, part = _part(points)
    metric, metric_mode = _metric(FLAGS.config)
    check_unchanged(points)  # in either --mode
    check_same_points(workdir, points)
    workdir_lib.ensure_dir(workdir)
  except ValueError as e:  # SweepError, ConfigError (WorkdirError), a task's ValueError
    source = ' '.join(f'--sweep {s}' for s in FLAGS.sweep) or config_arg
    print(f'seqlab: bad sweep ({source}): {e}', file=sys.stderr)
    return 2
  header = {'config': config_arg, 'overrides': base_overrides,
            'keys': sorted(set().union(*(p.overrides for p in points))),
            'metric': metric, 'metric_mode': metric_mode}
  if FLAGS.launcher == 'slurm':
    resources = slurm.Resources(
        partition=FLAGS.slurm_partition, time=FLAGS.slurm_time,
        cpus_per_task=FLAGS.slurm_cpus_per_task, gpus_per_task=FLAGS.slurm_gpus_per_task,
        mem=FLAGS.slurm_mem, max_concurrent=FLAGS.slurm_max_concurrent)
    return launch_slurm(points, workdir, header, mode=FLAGS.mode, resources=resources,
                        wait=FLAGS.wait,
                        command=_element_command(config_arg, base_overrides, workdir))
  return run_sweep(points, workdir, header, mode=FLAGS.mode, parallel=FLAGS.parallel,
                   mine=mine, part=part)


def run():
  from absl import app  # pylint: disable=g-import-not-at-top
  app.run(lambda argv: sys.exit(main(argv)), flags_parser=cli.parser(FLAGS))


if __name__ == '__main__':
  run()

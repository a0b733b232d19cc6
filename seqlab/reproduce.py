"""Runs the published-result reproductions and writes our numbers beside theirs.

  python -m seqlab.reproduce [--quick] [--only adding_t100_lstm,copy_t100_lstm] \\
      [--seeds 3] [--workdir runs/reproduce]

Every entry is an ordinary experiment run (resumable: rerunning continues where it
stopped and skips finished seeds) in ``<workdir>/<name>/seed<k>``. The table
``<workdir>/reproduce.md`` gives task, model, the published figure and its source,
ours as mean ± sample std over every finished seed (and how many), wall time and
device. Ours is the test split at each run's best-on-validation checkpoint (``best/``,
chosen on the 'eval' rows alone), with the test figure of the last step apart: the
test rows each run logs once at its end (``train.final_test``). ``--quick`` shrinks
each entry's own config (variant and overrides) by its
experiment's ``:quick`` variant (seconds; for the tests), so its figures mean nothing
and its rows say what trained; they go to runs/reproduce_quick by default, and a
directory holding one kind of run refuses the other.
"""
if __name__ == '__main__':  # first, before jax imports: a Ctrl-C at any moment stops it
  from seqlab import signals  # pylint: disable=g-import-not-at-top
  signals.exit_until_caught(' (finished seeds are kept; the same command goes on from them).')
import dataclasses
import json
import os
import sys
import time

from absl import flags
import jax
import numpy as np

from seqlab import cli
from seqlab import config as config_lib
from seqlab import train
from seqlab import workdir as workdir_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@dataclasses.dataclass(frozen=True)
class Entry:
  """One reproduction: an experiment variant, the metric read, the published figure."""
  name: str
  experiment: str          # experiments/<experiment>.py
  variant: str | None      # get_config(variant)
  model: str               # what the table calls the model
  metric: str              # eval metric reported (scaled by ``scale``)
  published: str           # the published figure, as text
  source: str
  scale: float = 1.0       # e.g. 100 for accuracy in percent
  overrides: tuple = ()    # (('key.path', value), ...)
  run: str = ''            # the runs' directory (default ``name``): entries reading
                           # several metrics of one experiment share its runs

  @property
  def directory(self) -> str:
    return self.run or self.name


MUSIC_SOURCE = ('Boulanger-Lewandowski et al. 2012 (as cited in issue 25); Chung et al. 2014, '
                'table 2 (GRU 8.54 checked against Papers with Code; tanh and LSTM recalled, not '
                're-read); ours: the music21 Bach chorales, NOT the standard JSB split')
ENTRIES = (
    Entry('adding_t100_lstm', 'adding', None, 'LSTM 128', 'mse',
          'LSTM well below the 0.167 baseline', 'Le et al. 2015, Fig. 2; Arjovsky et al. 2016'),
    Entry('adding_t100_rnn', 'adding', 'rnn', 'tanh RNN 128', 'mse',
          'tanh RNN stuck at the 0.167 baseline', 'Le et al. 2015, Fig. 2'),
    # At T = 200 and 400 the LSTM's plateau at 0.167 lasts 3000 to 9000+ steps, varying
    # with the seed: 6000 steps (the variants' default) is not always enough.
    Entry('adding_t200_lstm', 'adding', 't200', 'LSTM 128', 'mse',
          'LSTM well below 0.167', 'Le et al. 2015, Fig. 2', overrides=(('train.steps', 12000),)),
    Entry('adding_t200_rnn', 'adding', 't200', 'tanh RNN 128', 'mse',
          'tanh RNN stuck at 0.167', 'Le et al. 2015, Fig. 2', overrides=(('model.cell', 'rnn'),)),
    Entry('adding_t400_lstm', 'adding', 't400', 'LSTM 128', 'mse',
          'LSTM below 0.167', 'Le et al. 2015, Fig. 2', overrides=(('train.steps', 12000),)),
    Entry('adding_t400_rnn', 'adding', 't400', 'tanh RNN 128', 'mse',
          'tanh RNN stuck at 0.167', 'Le et al. 2015, Fig. 2', overrides=(('model.cell', 'rnn'),)),
    Entry('copy_t100_lstm', 'copy', None, 'LSTM 128', 'cross_entropy',
          'LSTM beats the baseline 10 log 8/(T+20) = 0.173', 'Arjovsky et al. 2016, Fig. 1'),
    Entry('copy_t200_lstm', 'copy', 't200', 'LSTM 128', 'cross_entropy',
          'LSTM stuck at the baseline 0.094', 'Arjovsky et al. 2016, Fig. 1'),
    Entry('mnist1d_gru', 'mnist1d', None, 'biGRU 6, linear over all steps', 'accuracy',
          "GRU 91% (logistic 32%, MLP 68%, CNN 94%); the authors' notebook run: 90.3% at its best step "
          '(4000), 89.1% at step 6000',
          'Greydanus & Kobak 2020 (mnist1d README table; notebooks/mnist1d-classification.ipynb)',
          scale=100),
    Entry('mnist1d_shuffled_gru', 'mnist1d', 'shuffled', 'biGRU 6, shuffled steps', 'accuracy',
          "GRU 57% (CNN 56%); the authors' notebook run: 56.8% at its best step (1000), "
          '53.3% at step 6000',
          'Greydanus & Kobak 2020 (mnist1d README table; notebooks/mnist1d-classification.ipynb)',
          scale=100),
    Entry('japanese_vowels_lstm', 'japanese_vowels', None, 'biLSTM 64', 'accuracy',
          'FCN 99.3%, TWIESN 96.5%', 'Fawaz et al. 2019 (as cited in issue 4; not re-read)', scale=100),
    Entry('japanese_vowels_gru', 'japanese_vowels', 'gru', 'biGRU 64', 'accuracy',
          'FCN 99.3%, TWIESN 96.5%', 'Fawaz et al. 2019 (as cited in issue 4; not re-read)', scale=100),
    Entry('reverse_attention', 'reverse', None, 'LSTM enc-dec, attention',
          'decode_exact_match', 'an attention model solves it (issue target >= 0.95)',
          'Bahdanau et al. 2015 (task: ours)'),
    Entry('g2p_per', 'g2p', None, 'biLSTM 64 enc, LSTM dec, Luong general',
          'decode_token_error_rate', 'PER 7.63% (enc-dec LSTM, no attention)',
          'Yao & Zweig 2015 (as cited in issue 7, not re-read; our held-out split is our own)', scale=100, run='g2p'),
    Entry('g2p_wer', 'g2p', None, 'biLSTM 64 enc, LSTM dec, Luong general',
          'decode_sequence_error_rate', 'WER 28.61% (enc-dec LSTM, no attention)',
          'Yao & Zweig 2015 (as cited in issue 7, not re-read; our held-out split is our own)', scale=100, run='g2p'),
    # The music21 chorales are not the standard JSB split (nor its pieces' exact
    # encoding): the published JSB test figures are near ours, not equal.
    Entry('music_chorales_rnn', 'music', 'rnn', 'tanh RNN 128', 'nll',
          'JSB test NLL/step: RNN 8.71 (Boulanger-Lewandowski); tanh RNN 9.10 (Chung)',
          MUSIC_SOURCE),
    Entry('music_chorales_gru', 'music', 'gru', 'GRU 128', 'nll',
          'JSB test NLL/step: GRU 8.54 (Chung)', MUSIC_SOURCE),
    Entry('music_chorales_lstm', 'music', None, 'LSTM 128', 'nll',
          'JSB test NLL/step: LSTM 8.67 (Chung)', MUSIC_SOURCE),
)


def load_config(experiment: str, variant):
  path = os.path.join(ROOT, 'experiments', f'{experiment}.py')
  return config_lib.load_file(path, f'experiments_{experiment}').get_config(variant)


def _flat(config, prefix: str = '') -> dict:
  """{'model.cell': 'lstm', ...}: every leaf of ``config`` by its dotted key."""
  out = {}
  for key, value in config.items():
    out.update(_flat(value, f'{prefix}{key}.') if hasattr(value, 'items')
               else {prefix + key: value})
  return out


def quick_shrink(experiment: str) -> dict:
  """The keys the experiment's ``:quick`` variant changes from its default, with
  :quick's values (steps, sizes, lengths, data): ``--quick`` applies them on top of
  any entry, so that a quick ``adding:rnn`` still trains a tanh RNN, only smaller."""
  default, quick = _flat(load_config(experiment, None)), _flat(load_config(experiment, 'quick'))
  return {k: v for k, v in quick.items() if default.get(k) != v}


def entry_config(entry: Entry, seed: int, quick: bool):
  """The entry's variant and overrides, then (``quick``) the experiment's shrink."""
  config = load_config(entry.experiment, entry.variant)
  overrides = {**dict(entry.overrides), **(quick_shrink(entry.experiment) if quick else {})}
  for key, value in overrides.items():
    *path, last = key.split('.')
    section = config
    for p in path:
      section = section[p]
    section[last] = value
  config.seed = seed
  return config


def _done_path(workdir, entry, seed):
  return os.path.join(workdir, entry.directory, f'seed{seed}', 'reproduce.json')


def config_changes(entry: Entry, seed: int, workdir: str, quick: bool) -> list[str]:
  """How the config that seed ``seed``'s run was started with differs from the one
  ``entry`` asks for now ('key: old -> new'); [] if the same or not started."""
  return workdir_lib.config_changes(os.path.join(workdir, entry.directory, f'seed{seed}'),
                                    entry_config(entry, seed, quick))


def run_entry(entry: Entry, seeds: int, workdir: str, quick: bool) -> bool:
  """Runs (or resumes, or skips when finished) every seed; False if interrupted.

  A seed started with another config (the entry or its experiment changed since)
  is refused, neither resumed nor tabled."""
  for seed in range(seeds):
    done = _done_path(workdir, entry, seed)
    if os.path.exists(done):
      with open(done) as f:
        if json.load(f).get('quick', False) != quick:  # a --quick figure in a real table
          raise ValueError(f'{done} holds a {"full" if quick else "--quick"} run, this is '
                           f'{"a --quick" if quick else "a full"} one; give another --workdir')
    changed = config_changes(entry, seed, workdir, quick)
    if changed:
      raise ValueError(f'{os.path.dirname(done)} was started with another config than '
                       f'{entry.name} asks for now ({workdir_lib.show_changes(changed)}); delete that '
                       'directory to rerun the seed, or give another --workdir')
    if os.path.exists(done):
      continue
    t0 = time.perf_counter()
    metrics = train.train_and_evaluate(entry_config(entry, seed, quick), os.path.dirname(done))
    if not metrics:  # interrupted: the run saved a checkpoint; rerun to continue
      return False
    with open(done, 'w') as f:
      json.dump({'metrics': metrics, 'wall_s': time.perf_counter() - t0, 'quick': quick}, f)
  return True


def finished_seeds(entry: Entry, workdir: str) -> list[int]:
  """The seeds of ``entry`` that have finished in ``workdir``, whatever --seeds asked
  this time: a table after ``--seeds 1`` keeps an earlier row's 3 seeds."""
  folder = os.path.join(workdir, entry.directory)
  names = os.listdir(folder) if os.path.isdir(folder) else []
  return sorted(int(n[4:]) for n in names if n.startswith('seed') and n[4:].isdigit()
                and os.path.exists(_done_path(workdir, entry, int(n[4:]))))


def summarize(entry: Entry, workdir: str) -> dict | None:
  """The table row of ``entry`` over its finished seeds, if it has any and all were
  run with the config it asks for now, else None. The ± is the sample standard
  deviation (ddof 1; 0 for one seed)."""
  seeds = finished_seeds(entry, workdir)
  if not seeds:
    return None
  paths = [_done_path(workdir, entry, seed) for seed in seeds]
  results = [json.load(open(p)) for p in paths]
  stale = [s for s, r in zip(seeds, results)
           if config_changes(entry, s, workdir, r.get('quick', False))]
  if stale:
    print(f'seqlab: {entry.name} is not in the table: seed {stale[0]} was run with another '
          'config than the entry asks for now; rerun it to see why', file=sys.stderr)
    return None
  tests = [workdir_lib.logged_test(os.path.dirname(p)) for p in paths]
  untested = [s for s, t in zip(seeds, tests) if len(t) < 2]
  if untested:
    print(f'seqlab: {entry.name} is not in the table: seed {untested[0]} finished without '
          'test rows (run before validation and test splits existed, selecting on test); '
          'give another --workdir to rerun it',
          file=sys.stderr)
    return None
  values = [t['best'][entry.metric] * entry.scale for t in tests]
  last = [t['last'][entry.metric] * entry.scale for t in tests]
  walls = [r['wall_s'] for r in results]
  task, model = entry.experiment + (f':{entry.variant}' if entry.variant else ''), entry.model
  if results[0].get('quick', False):  # what trained: the entry's config, shrunk
    m = entry_config(entry, 0, quick=True).model
    task += ' shrunk by :quick'
    model = ' '.join(str(m[k]) for k in ('cell', 'hidden_size') if k in m) + ' (smoke run)'
  return {'name': entry.name, 'task': task,
          'model': model, 'metric': entry.metric, 'published': entry.published,
          'source': entry.source, 'mean': float(np.mean(values)),
          'std': float(np.std(values, ddof=1)) if len(values) > 1 else 0.0,
          'values': values, 'best_steps': [int(t['best']['checkpoint_step']) for t in tests],
          'last_mean': float(np.mean(last)), 'last_values': last,
          'seeds': len(seeds), 'wall_s': float(np.sum(walls))}


def markdown_table(rows, device: str) -> str:
  """Ours = the test split at each run's best-on-validation checkpoint (mean ± std over
  seeds, and each seed's with its checkpoint's step: a task that some seeds solve and
  others do not shows as such); 'test at the last step' = the mean over seeds of the
  test figure of each run's final weights, shown apart."""
  lines = ['| task | model | metric | published | source | ours: test at best-on-validation '
           'checkpoint (mean ± std) | per seed (@ step) | test at the last step | seeds '
           '| wall time | device |',
           '| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |']
  for r in rows:
    per_seed = ', '.join(f'{v:.4g} @ {s}' for v, s in zip(r['values'], r['best_steps']))
    lines.append(f"| {r['task']} | {r['model']} | {r['metric']} | {r['published']} | {r['source']} "
                 f"| {r['mean']:.4g} ± {r['std']:.2g} | {per_seed} | {r['last_mean']:.4g} "
                 f"| {r['seeds']} | {r['wall_s'] / 60:.1f} min | {device} |")
  return '\n'.join(lines) + '\n'


def device_name() -> str:
  """'gpu: NVIDIA H100 x1', or for the CPU its model name and core count."""
  d = jax.devices()[0]
  kind = getattr(d, 'device_kind', str(d))
  if jax.default_backend() == 'cpu':
    try:
      with open('/proc/cpuinfo') as f:
        kind = next(l.split(':', 1)[1].strip() for l in f if l.startswith('model name'))
    except (OSError, StopIteration):
      pass
    return f'cpu: {kind}, {os.cpu_count()} cores'
  return f'{jax.default_backend()}: {kind} x{jax.device_count()}'


FLAGS = flags.FlagValues()  # our own: see seqlab.cli
_QUICK = flags.DEFINE_bool('quick', False, "Shrink each entry's config by its experiment's "
                           ':quick variant (seconds; for tests; the figures mean nothing).',
                           flag_values=FLAGS)
_ONLY = flags.DEFINE_list('only', [], 'Entries to run (default all): '
                          + ', '.join(e.name for e in ENTRIES) + '. The table lists every '
                          'entry with finished seeds.', flag_values=FLAGS)
_SEEDS = flags.DEFINE_integer('seeds', 3, 'Seeds to run per entry (0..N-1); the table uses '
                              'every finished seed and says how many.', lower_bound=1,
                              flag_values=FLAGS)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Where the runs and table go (default '
                               'runs/reproduce, with --quick runs/reproduce_quick).',
                               flag_values=FLAGS)


def main(argv):
  del argv
  workdir_lib.quiet_logging()
  names = [e.name for e in ENTRIES]
  unknown = [n for n in _ONLY.value if n not in names]
  if unknown:
    print(f'seqlab: unknown reproduction {unknown[0]!r}; choose from: {", ".join(names)}',
          file=sys.stderr)
    return 2
  workdir = _WORKDIR.value or ('runs/reproduce_quick' if _QUICK.value else 'runs/reproduce')
  for entry in ENTRIES:
    if not _ONLY.value or entry.name in _ONLY.value:
      print(f'== {entry.name}', flush=True)
      try:
        finished = run_entry(entry, _SEEDS.value, workdir, _QUICK.value)
      except ValueError as e:
        print(f'seqlab: {e}', file=sys.stderr)
        return 2
      except workdir_lib.WriteError as e:  # a full disk: the seeds written so far are kept
        cli.exit_after_write_error(e)
      if not finished:
        print('interrupted: rerun the same command to continue', flush=True)
        return 0
  rows = [r for e in ENTRIES if (r := summarize(e, workdir))]
  table = markdown_table(rows, device_name())
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, 'reproduce.md'), 'w') as f:
    f.write(table)
  with open(os.path.join(workdir, 'reproduce.json'), 'w') as f:
    json.dump(rows, f, indent=2)
  print(table)
  return 0


if __name__ == '__main__':
  cli.run(main, FLAGS)

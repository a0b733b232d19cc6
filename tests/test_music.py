"""The music task: the standard pickle layout, piano rolls, the frequency baseline, the
music21 chorales' cache, MIDI written and read back (by music21), and sampling."""
import importlib.util
import math
import os
import pickle

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from seqlab import models
from seqlab import sample
from seqlab import train
from seqlab import tasks
from seqlab.tasks import music
from conftest import cpu_env, load_config, run_module

needs_music21 = pytest.mark.skipif(importlib.util.find_spec('music21') is None,
                                   reason='needs music21 (seqlab[data])')
PIECES = {  # the standard layout: split -> pieces -> frames -> MIDI pitches
    'train': [[(60, 64, 67), (62,), ()], [(21,), (108,)]],
    'valid': [[(48,), (48, 52), (55,), (60,)]],
    'test': [[(72,), (74,)], [(60,), (61,), (62,)]],
}


def cfg(**kw):
  return ml_collections.FrozenConfigDict({'name': 'music', **kw})


def write_pickle(path, data, protocol=pickle.HIGHEST_PROTOCOL):
  with open(path, 'wb') as f:
    pickle.dump(data, f, protocol=protocol)
  return str(path)


def roll(frames):
  out = np.zeros((len(frames), 88), np.float32)
  for t, frame in enumerate(frames):
    for p in frame:
      out[t, p - 21] = 1
  return out


@pytest.mark.parametrize('protocol', [2, pickle.HIGHEST_PROTOCOL])
def test_reads_the_standard_pickle_layout(tmp_path, protocol):
  task = tasks.make_task(cfg(path=write_pickle(tmp_path / 'jsb.pickle', PIECES, protocol)),
                         seed=0)
  assert task.spec.loss == 'bernoulli' and task.spec.metric == 'nll' and task.spec.causal
  for split, key in (('eval', 'valid'), ('test', 'test')):
    pieces = PIECES[key]
    batch = task.batch(split, 0, len(pieces))
    assert task.num_eval_batches(len(pieces), split) == 1
    t = batch['inputs'].shape[1]
    assert t == 3  # every split padded to the longest piece less one frame
    for i, piece in enumerate(pieces):
      n = len(piece) - 1
      assert batch['lengths'][i] == n
      np.testing.assert_array_equal(batch['inputs'][i, :n], roll(piece[:-1]))
      np.testing.assert_array_equal(batch['targets'][i, :n], roll(piece[1:]))
      assert not batch['inputs'][i, n:].any() and not batch['targets'][i, n:].any()
  train_rows = {tuple(map(tuple, r[:2])) for r in task.batch('train', 0, 2)['inputs'][:, :2]}
  assert len(train_rows) == 2  # both training pieces in the first epoch's batch


def test_frequency_baseline_matches_a_hand_computation(tmp_path):
  task = tasks.make_task(cfg(path=write_pickle(tmp_path / 'p.pickle', PIECES)), seed=0)
  train_frames = [f for piece in PIECES['train'] for f in piece[1:]]  # the target frames
  test_frames = [f for piece in PIECES['test'] for f in piece[1:]]
  total = 0.0
  for frame in test_frames:
    for pitch in range(21, 109):
      p = (sum(pitch in f for f in train_frames) + 1) / (len(train_frames) + 2)
      total -= math.log(p if pitch in frame else 1 - p)
  assert task.spec.baseline == pytest.approx(total / len(test_frames), rel=1e-9)


@pytest.mark.parametrize('data,message', [
    ({'train': [], 'test': []}, "'valid' is missing"),
    ({**PIECES, 'train': [[(60,), (12,)]]}, r"\['train'\], piece 0, frame 1: pitch 12"),
    ({**PIECES, 'test': [[(60,)]]}, r"\['test'\], piece 0: a piece needs at least 2 frames"),
])
def test_bad_pickles_name_the_place(tmp_path, data, message):
  with pytest.raises(ValueError, match=message):
    tasks.make_task(cfg(path=write_pickle(tmp_path / 'bad.pickle', data)), seed=0)


def test_bad_keys_name_the_key(tmp_path):
  with pytest.raises(FileNotFoundError, match='task.path'):
    tasks.make_task(cfg(path=str(tmp_path / 'none.pickle')), seed=0)
  with pytest.raises(ValueError, match='task.pieces applies to the music21 chorales only'):
    tasks.make_task(cfg(path=write_pickle(tmp_path / 'p.pickle', PIECES), pieces=10), seed=0)
  with pytest.raises(ValueError, match='task.pieces=5 leaves no test piece'):
    tasks.make_task(cfg(pieces=5, cache_dir=str(tmp_path)), seed=0)


@needs_music21
def test_score_frames_sample_the_sounding_pitches_at_each_beat():
  from music21 import note, stream  # pylint: disable=g-import-not-at-top
  s = stream.Stream()
  s.insert(0.0, note.Note(60, quarterLength=2.0))
  s.insert(0.5, note.Note(64, quarterLength=0.5))  # covers no beat: dropped
  s.insert(1.0, note.Note(67, quarterLength=1.5))  # sounds at beats 1 and 2
  assert music.score_frames(s) == [(60,), (60, 67), (67,)]


@needs_music21
def test_midi_written_is_read_back_by_music21(tmp_path):
  from music21 import converter  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  piece = (rng.random((12, 88)) < 0.05).astype(np.float32)
  piece[3, [0, 87]] = 1  # the lowest and highest keys
  piece[4:8, 39] = 1     # a held note: one MIDI note over four frames
  path = str(tmp_path / 'piece.mid')
  music.write_midi(path, piece)
  score = converter.parse(path)
  frames = music.score_frames(score)
  assert len(frames) == np.flatnonzero(piece.any(1)).max() + 1  # to the last sounding frame
  np.testing.assert_array_equal(music.piano_roll(frames), piece[:len(frames)])
  assert any(float(n.quarterLength) == 4.0 for n in score.flatten().notes)  # the held note


@needs_music21
def test_chorales_are_parsed_once_split_and_cached(tmp_path, monkeypatch):
  task = tasks.make_task(cfg(pieces=10, cache_dir=str(tmp_path)), seed=0)
  assert [len(task.splits.of(s)) for s in ('train', 'eval', 'test')] == [8, 1, 1]
  assert os.path.exists(tmp_path / 'music21_chorales_first10.pickle')
  with open(tmp_path / 'music21_chorales_first10.pickle', 'rb') as f:
    cached = pickle.load(f)
  names = [p.stem for p in music.chorale_files()[:10]]
  assert names == sorted(names) and all(n.startswith('bwv') for n in names)
  assert len(cached['train']) == 8 and all(
      21 <= p <= 108 for piece in cached['train'] for f in piece for p in f)
  assert 0 < task.spec.baseline < 88 * math.log(2)
  monkeypatch.setattr(music, 'make_chorales', lambda *a: pytest.fail('parsed again'))
  again = tasks.make_task(cfg(pieces=10, cache_dir=str(tmp_path)), seed=0)
  np.testing.assert_array_equal(again.splits.test.targets, task.splits.test.targets)


def test_sample_frames_equal_the_full_sequence_forward_pass(tmp_path):
  """A run trained on the small pickle; ``python -m seqlab.sample`` writes MIDI files
  and says where; the logits each sampled frame was drawn from equal those of one
  forward pass over the frames."""
  config = load_config('music', 'quick')
  config.task.path = write_pickle(tmp_path / 'p.pickle', PIECES)
  config.task.pieces = 0
  config.train.batch_size = 2
  config.train.steps = config.train.eval_every = config.train.checkpoint_every = 2
  train.train_and_evaluate(config, str(tmp_path / 'run'))
  paths = sample.sample_midi(str(tmp_path / 'run'), length=6, seed=3, num_samples=2)
  assert [os.path.basename(p) for p in paths] == ['music_seed3_0.mid', 'music_seed3_1.mid']
  assert all(open(p, 'rb').read(4) == b'MThd' for p in paths)
  proc = run_module('seqlab.sample', '--workdir', str(tmp_path / 'run'), '--length', '4',
                    '--seed', '5', env=cpu_env())
  out = tmp_path / 'run' / 'samples' / 'music_seed5_0.mid'
  assert proc.returncode == 0 and proc.stdout.strip() == f'wrote {out}', proc.stderr[-2000:]
  assert out.read_bytes()[:4] == b'MThd'
  _, task, model, state, _ = train.load_run(str(tmp_path / 'run'))
  prompt = jnp.asarray(roll(PIECES['valid'][0][:1])[None].repeat(2, 0))
  frames, logits = models.sample_frames(model, state['params'], prompt, jax.random.key(3), 6)
  assert frames.shape == (2, 6, 88) and set(np.unique(frames)) <= {0.0, 1.0}
  full, _ = model.apply(state['params'], jnp.concatenate([prompt, frames[:, :-1]], axis=1))
  np.testing.assert_allclose(np.asarray(logits), np.asarray(full), rtol=1e-5, atol=1e-5)
  greedy, g_logits = models.sample_frames(model, state['params'], prompt, jax.random.key(0), 6,
                                          temperature=0.0)
  np.testing.assert_array_equal(np.asarray(greedy), np.asarray(g_logits > 0, np.float32))


def test_length_buckets_cut_inputs_and_per_step_targets_to_the_bound(tmp_path):
  """``train.length_buckets`` on pieces of 2, 3, 5 and 9 frames (1, 2, 4, 8 steps): each
  train batch is the padded task's rows cut to its bucket's bound, targets as inputs
  (one per step), nothing but padding cut; every piece once per epoch. A test piece of
  12 frames pads the splits to 11 steps; the longest train batch (what the memory check
  compiles) is cut to the top bound, 8, targets too."""
  pieces = dict(PIECES, train=[[(60 + i,)] * n for i, n in enumerate((2, 3, 5, 9))],
                test=[[(72,)] * 12])
  task = tasks.make_task(cfg(path=write_pickle(tmp_path / 'p.pickle', pieces)), seed=0)
  bucketed = tasks.length_buckets(task, 2)
  train_ = task.splits.train
  assert bucketed.bounds(2).tolist() == [2, 8]
  seen = np.zeros(len(train_))
  for step in range(2):  # one epoch: two buckets of two pieces
    batch = bucketed.batch('train', step, 2)
    bound = batch['inputs'].shape[1]
    assert bound in (2, 8) and batch['targets'].shape == (2, bound, 88)
    rows = [int(np.flatnonzero(train_.lengths == n)[0]) for n in batch['lengths']]
    np.testing.assert_array_equal(batch['inputs'], train_.inputs[rows, :bound])
    np.testing.assert_array_equal(batch['targets'], train_.targets[rows, :bound])
    assert not train_.targets[rows, bound:].any()
    np.add.at(seen, rows, batch['example_weight'])
  np.testing.assert_array_equal(seen, np.ones(len(train_)))
  assert train_.inputs.shape[1] == 11
  longest = tasks.longest_train_batch(bucketed, 2)
  assert longest['inputs'].shape == (2, 8, 88) and longest['targets'].shape == (2, 8, 88)

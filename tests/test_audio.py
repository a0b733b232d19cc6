"""The audio task: the WAV reader on good and bad files, the log-mel features against a
plain DFT and the mel formula written here, the folder layout and its splits, and the
espeak-ng digits (voices held out)."""
import math
import os
import shutil
import wave

import ml_collections
import numpy as np
import pytest

from seqlab import config as config_lib
from seqlab import train
from seqlab import tasks
from seqlab.tasks import audio
from seqlab.tasks import digits
from seqlab.tasks import wav
from conftest import load_config

needs_espeak = pytest.mark.skipif(shutil.which('espeak-ng') is None,
                                  reason='needs espeak-ng (apt-get install -y espeak-ng)')


def write(path, samples, rate=16000, channels=1, width=2):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with wave.open(str(path), 'wb') as f:
    f.setnchannels(channels)
    f.setsampwidth(width)
    f.setframerate(rate)
    f.writeframes(np.asarray(samples, f'<i{width}' if width > 1 else np.uint8).tobytes())
  return str(path)


def test_wav_round_trip_and_scaling(tmp_path):
  path = write(tmp_path / 'a.wav', [0, 16384, -32768, 32767])
  np.testing.assert_array_equal(wav.read_wav(path), [0.0, 0.5, -1.0, 32767 / 32768])
  wav.write_wav(str(tmp_path / 'b.wav'), np.array([0.0, 0.5, -1.0, 2.0]))
  np.testing.assert_array_equal(wav.read_wav(str(tmp_path / 'b.wav')),
                                np.array([0, 16384, -32767, 32767]) / 32768)


@pytest.mark.parametrize('make,message', [
    (lambda p: open(p, 'wb').close(), 'the file is empty'),
    (lambda p: open(p, 'w').write('not audio at all, just text'), 'not a readable WAV file'),
    (lambda p: write(p, np.zeros(20), channels=2), 'has 2 channels'),
    (lambda p: write(p, np.zeros(10), rate=8000), 'sample rate 8000 Hz'),
    (lambda p: write(p, np.full(10, 128), width=1), '8-bit samples'),
    (lambda p: write(p, []), 'holds no samples'),
])
def test_bad_wav_files_give_one_line_naming_the_file(tmp_path, make, message):
  path = str(tmp_path / 'clip.wav')
  make(path)
  with pytest.raises(ValueError, match=message) as e:
    wav.read_wav(path)
  assert str(e.value).startswith(path + ': ') and '\n' not in str(e.value)
  # through a run's start-up: the same line, as a config error (seqlab.run prints one line)
  data = tmp_path / 'data'
  for label in ('no', 'yes'):
    for speaker in ('a', 'b'):
      write(data / label / f'{speaker}_nohash_0.wav', np.zeros(800))
  shutil.copy(path, data / 'yes' / 'b_nohash_0.wav')
  (data / 'validation_list.txt').write_text('no/b_nohash_0.wav\n')
  (data / 'testing_list.txt').write_text('yes/b_nohash_0.wav\n')
  config = load_config('spoken_digits', 'quick')
  config.task.data_dir = str(data)
  with pytest.raises(config_lib.ConfigError, match='b_nohash_0.wav: ') as e:
    train.build(config)
  assert '\n' not in str(e.value)


def test_mel_filterbank_matches_the_formula_bin_by_bin():
  bank = audio.mel_filterbank(bands=6, n_fft=64, rate=8000)
  mel = lambda f: 2595 * math.log10(1 + f / 700)
  inv = lambda m: 700 * (10 ** (m / 2595) - 1)
  edges = [inv(i * mel(4000) / 7) for i in range(8)]
  for b in range(6):
    lo, peak, hi = edges[b], edges[b + 1], edges[b + 2]
    for k in range(33):
      f = k * 8000 / 64
      want = (f - lo) / (peak - lo) if lo <= f <= peak else (
          (hi - f) / (hi - peak) if peak < f <= hi else 0.0)
      assert bank[b, k] == pytest.approx(want, abs=1e-12), (b, k)


def test_log_mel_matches_a_plain_dft_frame_by_frame():
  rng = np.random.default_rng(0)
  x = rng.standard_normal(1000) * 0.1  # frames: 1 + (1000 - 400) // 160 = 4
  got = audio.log_mel(x)
  assert got.shape == (4, 40) and got.dtype == np.float32
  bank = audio.mel_filterbank()
  n = np.arange(400)
  for t in range(4):
    frame = x[160 * t:160 * t + 400] * (0.5 - 0.5 * np.cos(2 * np.pi * n / 400))
    power = [abs(sum(frame * np.exp(-2j * np.pi * k * n / 512))) ** 2 for k in range(257)]
    np.testing.assert_allclose(got[t], np.log(bank @ np.array(power) + 1e-6), rtol=1e-5)
  assert audio.log_mel(np.zeros(100)).shape == (1, 40)  # shorter than a window: one frame


def test_which_set_keeps_a_speaker_together_and_splits_about_10_10_80():
  names = [f'{i:08x}_nohash_{k}.wav' for i in range(2000) for k in range(2)]
  sets = [audio.which_set(n) for n in names]
  assert all(a == b for a, b in zip(sets[::2], sets[1::2]))  # a speaker's clips together
  share = {s: sets.count(s) / len(sets) for s in ('train', 'eval', 'test')}
  assert 0.07 < share['eval'] < 0.13 and 0.07 < share['test'] < 0.13


def test_folder_lists_and_training_statistics(tmp_path):
  rng = np.random.default_rng(1)
  for label, n in (('yes', 3), ('no', 3), ('_background_noise_', 1)):
    for i in range(n):
      write(tmp_path / label / f's{i}_nohash_0.wav', rng.integers(-3000, 3000, 800 + 400 * i))
  (tmp_path / 'validation_list.txt').write_text('yes/s1_nohash_0.wav\n')
  (tmp_path / 'testing_list.txt').write_text('no/s2_nohash_0.wav\nyes/s2_nohash_0.wav\n')
  task = tasks.make_task(ml_collections.FrozenConfigDict(
      {'name': 'audio', 'data_dir': str(tmp_path)}), seed=0)
  assert task.labels == ['no', 'yes'] and task.spec.num_outputs == 2
  assert [len(task.splits.of(s)) for s in ('train', 'eval', 'test')] == [3, 1, 2]
  raw = {s: [audio.log_mel(wav.read_wav(str(tmp_path / c))) for c in clips]
         for s, clips in (('train', ['no/s0_nohash_0.wav', 'no/s1_nohash_0.wav',
                                     'yes/s0_nohash_0.wav']),
                          ('test', ['no/s2_nohash_0.wav', 'yes/s2_nohash_0.wav']))}
  frames = np.concatenate(raw['train'])
  mean, std = frames.mean(0), frames.std(0)
  test = task.batch('test', 0, 2)
  np.testing.assert_array_equal(test['targets'], [0, 1])
  for i, x in enumerate(raw['test']):
    assert test['lengths'][i] == len(x)
    np.testing.assert_allclose(test['inputs'][i, :len(x)], (x - mean) / std, rtol=1e-4,
                               atol=1e-4)
    assert not test['inputs'][i, len(x):].any()
  assert task.num_eval_batches(2, 'test') == 1 and task.num_eval_batches(1) == 1


def test_an_empty_split_and_a_missing_folder_are_named(tmp_path):
  write(tmp_path / 'yes' / 'a_nohash_0.wav', np.zeros(800))
  (tmp_path / 'testing_list.txt').write_text('yes/a_nohash_0.wav\n')
  with pytest.raises(ValueError, match="the 'train' split has no clip"):
    audio.list_clips(str(tmp_path))
  with pytest.raises(FileNotFoundError, match='task.data_dir'):
    audio.list_clips(str(tmp_path / 'nope'))


@needs_espeak
def test_quick_digits_hold_the_test_voices_out(tmp_path):
  out = digits.make_digits(str(tmp_path / 'digits'), 'quick')
  labels, clips = audio.list_clips(out)
  assert labels == sorted(digits.DIGITS)
  voice = lambda path: os.path.basename(path).split('_nohash_')[0]
  voices = {s: {voice(p) for p, _ in rows} for s, rows in clips.items()}
  assert voices == {s: {v.replace('+', '-') for v in names}
                    for s, names in digits.QUICK_VOICES.items()}
  assert sum(len(rows) for rows in clips.values()) == 40
  x = wav.read_wav(clips['test'][0][0])
  assert 0.1 < len(x) / wav.SAMPLE_RATE < 2 and np.abs(x).max() <= 1

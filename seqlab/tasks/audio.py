"""Audio classification: clips in a folder per label, read as log-mel filterbanks.

Layout (that of Google's Speech Commands, Warden 2018): ``DIR/<label>/*.wav``, 16 kHz
mono 16-bit PCM; folders whose name starts with '_' (``_background_noise_``) are not
labels. The split is ``DIR/validation_list.txt`` and ``DIR/testing_list.txt`` (one
``<label>/<file>.wav`` a line; 'eval' reads the validation clips) when either is
present, the other clips training; else the data set's own rule: the SHA-1 of the
file name less its ``_nohash_...`` tail (the speaker) decides, 10% validation, 10%
test (``which_set``), so one speaker's clips share a split.

Features, computed here in NumPy: a 25 ms Hann window (400 samples) every 10 ms
(160), a 512-point FFT's power, 40 triangular mel bands (HTK mel scale, 2595
log10(1 + f / 700), from 0 Hz to 8 kHz), log(power + 1e-6). Each band is then
normalised with the mean and standard deviation of the TRAINING clips' frames only.
Clips have their own lengths (frames = 1 + (samples - 400) // 160): batches are
zero-padded and carry 'lengths'.

Offline default (``task.data_dir=''``): SYNTHETIC spoken digits made by espeak-ng
(``seqlab.tasks.digits``: 720 clips, the test voices held out) on first use in
``<cache_dir>/spoken_digits`` (``base.cache_dir``); ``task.digits='quick'`` makes 40
clips in ``spoken_digits_quick`` for quick runs. The same task reads real recordings
(Speech Commands) with ``task.data_dir``.
"""
import dataclasses
import functools
import hashlib
import os
import re

import numpy as np

from seqlab.tasks import arrays
from seqlab.tasks import base
from seqlab.tasks import wav

WINDOW = 400         # samples: 25 ms
HOP = 160            # samples: 10 ms
N_FFT = 512
BANDS = 40
LOG_FLOOR = 1e-6     # log(mel power + LOG_FLOOR): silence stays finite
MAX_NUM_WAVS_PER_CLASS = 2**27 - 1  # Speech Commands' which_set constant


# --- Features -----------------------------------------------------------------------------
def hz_to_mel(f):
  return 2595.0 * np.log10(1.0 + np.asarray(f, np.float64) / 700.0)


def mel_to_hz(m):
  return 700.0 * (10.0 ** (np.asarray(m, np.float64) / 2595.0) - 1.0)


def mel_filterbank(bands: int = BANDS, n_fft: int = N_FFT, rate: int = wav.SAMPLE_RATE
                   ) -> np.ndarray:
  """float64 [bands, n_fft // 2 + 1]: triangles over the FFT bins' frequencies
  f_k = k rate / n_fft, band b rising from edge b to its peak at edge b + 1 and falling
  to 0 at edge b + 2, the bands + 2 edges equally spaced in mel from 0 to rate / 2."""
  edges = mel_to_hz(np.linspace(0.0, hz_to_mel(rate / 2), bands + 2))
  f = np.arange(n_fft // 2 + 1) * rate / n_fft
  lo, peak, hi = edges[:-2, None], edges[1:-1, None], edges[2:, None]
  return np.maximum(0.0, np.minimum((f - lo) / (peak - lo), (hi - f) / (hi - peak)))


def log_mel(signal: np.ndarray) -> np.ndarray:
  """float [samples] -> float32 [frames, BANDS] log mel power (module docstring); a clip
  shorter than a window is zero-padded to one."""
  x = np.asarray(signal, np.float64)
  x = np.pad(x, (0, max(0, WINDOW - len(x))))
  frames = 1 + (len(x) - WINDOW) // HOP
  index = np.arange(WINDOW)[None, :] + HOP * np.arange(frames)[:, None]
  hann = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(WINDOW) / WINDOW)  # periodic Hann
  power = np.abs(np.fft.rfft(x[index] * hann, N_FFT)) ** 2
  return np.log(power @ _filterbank().T + LOG_FLOOR).astype(np.float32)


@functools.lru_cache(maxsize=1)
def _filterbank() -> np.ndarray:
  return mel_filterbank()


# --- The data set -------------------------------------------------------------------------
def which_set(filename: str, validation_percent: float = 10, testing_percent: float = 10
              ) -> str:
  """Speech Commands' split rule: 'eval', 'test' or 'train' from the SHA-1 of the file
  name without its '_nohash_...' tail (so a speaker's clips stay together)."""
  speaker = re.sub(r'_nohash_.*$', '', os.path.basename(filename))
  digest = int(hashlib.sha1(speaker.encode('utf-8')).hexdigest(), 16)
  percent = (digest % (MAX_NUM_WAVS_PER_CLASS + 1)) * (100.0 / MAX_NUM_WAVS_PER_CLASS)
  if percent < validation_percent:
    return 'eval'
  return 'test' if percent < validation_percent + testing_percent else 'train'


def list_clips(data_dir: str) -> tuple[list[str], dict[str, list[tuple[str, int]]]]:
  """(labels, split -> [(path, class id)]) of ``data_dir`` (module docstring)."""
  if not os.path.isdir(data_dir):
    raise FileNotFoundError(f'task.data_dir={data_dir!r} is not a folder; give one holding '
                            "<label>/*.wav, or '' for the synthetic spoken digits")
  labels = arrays.sort_labels(d for d in os.listdir(data_dir) if not d.startswith('_')
                              and os.path.isdir(os.path.join(data_dir, d)))
  clips = [f'{label}/{name}' for label in labels
           for name in sorted(os.listdir(os.path.join(data_dir, label))) if name.endswith('.wav')]
  lists = {s: os.path.join(data_dir, name) for s, name in wav.LISTS.items()}
  if any(os.path.exists(p) for p in lists.values()):
    named = {s: set(_read_list(p)) for s, p in lists.items()}
    split_of = {c: next((s for s in wav.LISTS if c in named[s]), 'train') for c in clips}
  else:
    split_of = {c: which_set(c) for c in clips}
  out = {s: [(os.path.join(data_dir, c), labels.index(c.split('/')[0])) for c in clips
             if split_of[c] == s] for s in base.SPLITS}
  empty = [s for s, rows in out.items() if not rows]
  if empty:
    raise ValueError(f'{data_dir}: the {empty[0]!r} split has no clip ({len(clips)} clips in '
                     f'{len(labels)} label folders); add clips or list some in '
                     f'{", ".join(wav.LISTS.values())}')
  return labels, out


def _read_list(path: str) -> list[str]:
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return [line.strip() for line in f if line.strip()]


@functools.lru_cache(maxsize=4)
def load(data_dir: str) -> tuple[list[str], arrays.Splits]:
  """(labels, the three splits' Examples): log-mels normalised per band by the
  training frames' mean and std, zero-padded to the longest clip of any split."""
  labels, clips = list_clips(data_dir)
  feats = {s: [log_mel(wav.read_wav(p)) for p, _ in rows] for s, rows in clips.items()}
  train = np.concatenate(feats['train'])
  mean, std = train.mean(0), train.std(0)
  std = np.where(std > 0, std, 1.0)
  length = max(len(x) for rows in feats.values() for x in rows)
  splits = {}
  for s, rows in feats.items():
    inputs, lengths = arrays.pad_sequences([((x - mean) / std).astype(np.float32) for x in rows],
                                           length)
    inputs *= (np.arange(length)[None, :] < lengths[:, None])[..., None]  # padding stays 0
    splits[s] = arrays.Examples(inputs=inputs, lengths=lengths,
                                targets=np.array([y for _, y in clips[s]], np.int32))
  return labels, arrays.Splits(**splits)


@dataclasses.dataclass(frozen=True, eq=False)
class Audio:
  """Clips as log-mels: inputs float32 [batch, time, 40], targets int32 [batch], lengths
  int32 [batch]; ``labels[i]`` is class i's folder name."""
  seed: int
  labels: list
  splits: arrays.Splits

  @property
  def spec(self) -> base.Spec:
    return base.Spec(input_vocab=0, input_features=BANDS, target='sequence',
                     num_outputs=len(self.labels), loss='cross_entropy', metric='accuracy')

  def batch(self, split: str, step: int, batch_size: int) -> dict[str, np.ndarray]:
    return self.splits.batch(self.seed, split, step, batch_size)

  def num_eval_batches(self, batch_size: int, split: str = 'eval') -> int:
    return self.splits.num_batches(batch_size, split)


def digits_dir(cache_dir: str, digits: str) -> str:
  """The synthetic digits' folder in the cache, made on first use (``seqlab.tasks.digits``)."""
  from seqlab.tasks import digits as digits_lib  # pylint: disable=g-import-not-at-top
  if digits not in digits_lib.DIGIT_SETS:
    raise ValueError(f'task.digits={digits!r} is not valid; choose one of: '
                     f'{", ".join(digits_lib.DIGIT_SETS)}')
  path = os.path.join(base.cache_dir(cache_dir),
                      'spoken_digits' + ('' if digits == 'full' else '_quick'))
  if not os.path.isdir(path):
    digits_lib.make_digits(path, digits)
  return path


def from_config(task_cfg, seed: int) -> Audio:
  """``task.data_dir`` ('' = the synthetic spoken digits), ``task.cache_dir`` (''
  = ``base.cache_dir``), ``task.digits`` ('full' or 'quick', for the synthetic set)."""
  cfg = base.read_config(task_cfg, {'data_dir': '', 'cache_dir': '', 'digits': 'full'})
  base.check_int('seed', seed, minimum=0)
  data_dir = cfg['data_dir'] or digits_dir(cfg['cache_dir'], cfg['digits'])
  return Audio(seed, *load(os.path.abspath(data_dir)))

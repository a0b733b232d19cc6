"""WAV clips in the Speech Commands layout: reading and writing one clip (16 kHz mono
16-bit PCM, with the standard library's ``wave``), and the names of the list files
that split a folder of clips (``seqlab.tasks.audio`` reads them, ``digits`` writes them).
"""
import os
import wave

import numpy as np

SAMPLE_RATE = 16000  # Hz, of every clip read
LISTS = {'eval': 'validation_list.txt', 'test': 'testing_list.txt'}  # split -> list file


def read_pcm(path: str) -> tuple[int, int, int, bytes]:
  """(sample rate, channels, bytes per sample, raw frames) of a WAV file; ValueError in
  one line naming ``path`` when it is empty or not a WAV file."""
  if os.path.getsize(path) == 0:
    raise ValueError(f'{path}: the file is empty; expected a 16 kHz mono 16-bit WAV clip')
  try:
    with wave.open(path, 'rb') as f:
      params = f.getparams()
      raw = f.readframes(params.nframes)
  except (wave.Error, EOFError) as e:
    raise ValueError(f'{path}: not a readable WAV file ({e}); expected a 16 kHz mono '
                     '16-bit PCM clip') from None
  return params.framerate, params.nchannels, params.sampwidth, raw


def read_wav(path: str) -> np.ndarray:
  """A 16 kHz mono 16-bit PCM WAV clip -> float32 [samples] in [-1, 1).

  Any other file (empty, not a WAV, stereo, another rate or sample width, no
  samples) raises ValueError in one line naming ``path`` and what to change."""
  rate, channels, width, raw = read_pcm(path)
  if channels != 1:
    raise ValueError(f'{path}: has {channels} channels; seqlab reads mono clips (mix them '
                     'down, e.g. sox in.wav -c 1 out.wav)')
  if rate != SAMPLE_RATE:
    raise ValueError(f'{path}: sample rate {rate} Hz; seqlab reads {SAMPLE_RATE} Hz clips '
                     f'(resample, e.g. sox in.wav -r {SAMPLE_RATE} out.wav)')
  if width != 2:
    raise ValueError(f'{path}: {8 * width}-bit samples; seqlab reads 16-bit PCM')
  samples = np.frombuffer(raw, '<i2')
  if samples.size == 0:
    raise ValueError(f'{path}: holds no samples')
  return samples.astype(np.float32) / 32768.0


def write_wav(path: str, signal: np.ndarray, rate: int = SAMPLE_RATE) -> None:
  """float [samples] in [-1, 1] -> a mono 16-bit PCM WAV file (clipped to the range)."""
  pcm = np.clip(np.round(np.asarray(signal) * 32767.0), -32768, 32767).astype('<i2')
  with wave.open(path, 'wb') as f:
    f.setnchannels(1)
    f.setsampwidth(2)
    f.setframerate(rate)
    f.writeframes(pcm.tobytes())

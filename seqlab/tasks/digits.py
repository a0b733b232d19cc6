"""Synthetic spoken digits for the ``audio`` task, made by the espeak-ng speech synthesiser.

  python -m seqlab.tasks.digits DIR [--quick]

'zero' .. 'nine' said by espeak-ng (Debian's ``espeak-ng``; ``.ci/run`` installs it) in
12 voices (an accent and a voice variant each) at 3 speeds and 2 pitches, resampled to
16 kHz, silence trimmed, white noise added at 10-30 dB SNR: 720 clips in the Speech
Commands layout (``DIR/<digit>/<voice>_nohash_s<speed>p<pitch>.wav``). Voices are held
out: 8 train, 2 validation, 2 test (``validation_list.txt``, ``testing_list.txt``), and
the test voices' variants (m6, f5) are heard in no other split, so test accuracy
measures generalisation to unseen voices OF A SYNTHESISER, not to people. ``--quick``
(``task.digits='quick'``): 40 clips, 4 voices at one speed and pitch.
"""
import os
import shutil
import subprocess
import sys
import tempfile

import numpy as np

from seqlab.tasks import wav

DIGITS = ('zero', 'one', 'two', 'three', 'four', 'five', 'six', 'seven', 'eight', 'nine')
VOICES = {  # espeak-ng voices: accent + variant; the test variants (m6, f5) are nowhere else
    'train': ('en-us+m1', 'en-us+f1', 'en-gb+m2', 'en-gb+f2', 'en-gb-scotland+m3', 'en-029+f3',
              'en-gb-x-rp+m4', 'en-gb-x-gbclan+f4'),
    'eval': ('en-us+m5', 'en-gb-x-gbcwmd+f3'),
    'test': ('en-gb+m6', 'en-us+f5'),
}
QUICK_VOICES = {'train': ('en-us+m1', 'en-gb+f2'), 'eval': ('en-us+m5',), 'test': ('en-gb+m6',)}
SPEEDS = (130, 165, 200)   # words per minute
PITCHES = (30, 70)         # espeak-ng's 0-99 pitch
SNR_DB = (10.0, 30.0)      # white noise added at an SNR drawn uniformly from this range
DIGIT_SETS = ('full', 'quick')


def synthesize(word: str, voice: str, speed: int, pitch: int, rng: np.random.Generator
               ) -> np.ndarray:
  """espeak-ng saying ``word`` -> float32 [samples] at 16 kHz, silence trimmed (to 20 ms
  around the samples above 2% of the peak), white noise added at an SNR in ``SNR_DB``."""
  with tempfile.TemporaryDirectory() as tmp:
    path = os.path.join(tmp, 'word.wav')
    subprocess.run(['espeak-ng', '-v', voice, '-s', str(speed), '-p', str(pitch), '-w', path,
                    word], check=True, capture_output=True)
    rate, _, _, raw = wav.read_pcm(path)
  x = np.frombuffer(raw, '<i2').astype(np.float64) / 32768.0
  x = np.interp(np.arange(0, len(x) * wav.SAMPLE_RATE / rate) * rate / wav.SAMPLE_RATE,
                np.arange(len(x)), x)  # linear resampling to 16 kHz
  loud = np.flatnonzero(np.abs(x) > 0.02 * np.abs(x).max())
  margin = wav.SAMPLE_RATE // 50
  x = x[max(0, loud[0] - margin):loud[-1] + margin] / np.abs(x).max() * 0.5
  snr = rng.uniform(*SNR_DB)
  noise = rng.standard_normal(len(x)) * np.sqrt(np.mean(x ** 2) / 10 ** (snr / 10))
  return (x + noise).astype(np.float32)


def make_digits(out_dir: str, digits: str = 'full') -> str:
  """Writes the synthetic spoken digits (module docstring) to ``out_dir`` in the Speech
  Commands layout, with validation_list.txt and testing_list.txt naming the held-out
  voices' clips; returns ``out_dir``. Made in a sibling folder, then renamed into place."""
  if shutil.which('espeak-ng') is None:
    raise FileNotFoundError("the synthetic spoken digits need espeak-ng: apt-get install -y "
                            "espeak-ng (or set task.data_dir to recordings in the Speech "
                            'Commands layout)')
  voices = VOICES if digits == 'full' else QUICK_VOICES
  speeds, pitches = (SPEEDS, PITCHES) if digits == 'full' else (SPEEDS[1:2], (50,))
  parent = os.path.dirname(os.path.abspath(out_dir))
  os.makedirs(parent, exist_ok=True)
  tmp = tempfile.mkdtemp(prefix='.digits-', dir=parent)
  lists = {s: [] for s in wav.LISTS}
  rng = np.random.default_rng(0)
  for split, names in voices.items():
    for voice in names:
      for speed in speeds:
        for pitch in pitches:
          for word in DIGITS:
            clip = f'{word}/{voice.replace("+", "-")}_nohash_s{speed}p{pitch}.wav'
            os.makedirs(os.path.join(tmp, word), exist_ok=True)
            wav.write_wav(os.path.join(tmp, clip), synthesize(word, voice, speed, pitch, rng))
            if split in lists:
              lists[split].append(clip)
  for split, name in wav.LISTS.items():
    with open(os.path.join(tmp, name), 'w') as f:
      f.write(''.join(c + '\n' for c in lists[split]))
  try:
    os.replace(tmp, out_dir)
  except OSError:  # another process made it first
    shutil.rmtree(tmp)
    if not os.path.isdir(out_dir):
      raise
  return out_dir


def main(argv: list[str]) -> int:
  args = [a for a in argv if a != '--quick']
  if len(args) != 1 or args[0].startswith('-'):
    print('usage: python -m seqlab.tasks.digits DIR [--quick]', file=sys.stderr)
    return 2
  if os.path.exists(args[0]):
    print(f'seqlab: {args[0]} exists; name a new folder', file=sys.stderr)
    return 2
  print(f'wrote {make_digits(args[0], "quick" if "--quick" in argv else "full")}')
  return 0


if __name__ == '__main__':
  sys.exit(main(sys.argv[1:]))

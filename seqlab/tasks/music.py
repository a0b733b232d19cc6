"""Polyphonic music: piano-roll frames, each step's target the next frame.

A piece is a sequence of frames; a frame is the set of MIDI pitches sounding at that
time step, as a binary vector over the 88 piano keys (MIDI 21-108). The model reads
frames 0 .. T-2 and predicts frames 1 .. T-1 through 88 sigmoid outputs; the loss is
the frame's summed Bernoulli negative log-likelihood (``losses.bernoulli_nll``) and
the metric 'nll' is its mean per time step, as in Boulanger-Lewandowski et al. 2012
(ICML; test NLL per step of an RNN: JSB Chorales 8.71, Nottingham 4.46, MuseData
8.13, Piano-midi.de 8.37) and Chung et al. 2014 (tanh RNN, GRU and LSTM on the same
sets). Pieces have their own lengths: batches are zero-padded and carry 'lengths'.

Data (``task.path``):
  * a pickle in the layout those papers used (``JSB_Chorales.pickle`` and its
    siblings): a dict with 'train', 'valid' and 'test', each a list of pieces, each a
    list of frames, each a tuple of MIDI pitches. 'eval' reads 'valid'.
  * empty (the default): the Bach chorales that the ``music21`` wheel ships
    (``pip install -e .[data]``), the ``bwv*.mxl`` scores less the one prelude
    (bwv846): about 400. Each is parsed once into frames at quarter-note resolution
    (frame k holds the pitches sounding at quarter beat k of the score: a note from
    offset o lasting d quarters sounds in the frames o <= k < o + d, so notes shorter
    than a beat that cover no beat are dropped) and written in the same pickle layout
    to ``<cache_dir>/music21_chorales.pickle`` (``base.cache_dir``). The split is the
    scores sorted by file name: every tenth from the ninth 'valid', every tenth from the
    tenth 'test', the rest 'train'. It is NOT the standard JSB split (Allan & Williams
    2005, in the pickle above), so figures on it are near, not equal to, published ones.
    ``task.pieces`` > 0 parses the first that many scores only (quick runs and tests).

``Spec.baseline`` is the test NLL per step of independent per-pitch frequencies: each
pitch on with its frequency over the training frames (add-one smoothed, so a pitch
never seen in training costs a finite amount); a model must beat it clearly.
"""
import dataclasses
import functools
import os
import pickle
import struct

import numpy as np

from seqlab.tasks import arrays
from seqlab.tasks import base

LOWEST, HIGHEST = 21, 108  # MIDI pitches of the piano's lowest and highest keys
PITCHES = HIGHEST - LOWEST + 1  # 88: the units of a frame
SPLIT_KEYS = {'train': 'train', 'eval': 'valid', 'test': 'test'}  # seqlab split -> pickle key
NOT_CHORALES = ('bwv846',)  # the Bach scores music21 ships that are not chorales


def read_pickle(path: str) -> dict[str, list]:
  """The standard layout at ``path``: {'train', 'valid', 'test'} -> pieces -> frames ->
  MIDI pitches. Python 2 pickles (those of Boulanger-Lewandowski et al.) load too."""
  if not os.path.exists(path):
    raise FileNotFoundError(f'task.path={path!r} does not exist; give the path of a pickle '
                            "such as JSB_Chorales.pickle, or '' for the music21 chorales")
  with open(path, 'rb') as f:
    data = pickle.load(f, encoding='latin1')
  missing = [k for k in SPLIT_KEYS.values() if not isinstance(data, dict) or k not in data]
  if missing:
    raise ValueError(f'{path}: expected a dict with keys train, valid and test (lists of '
                     f'pieces); {missing[0]!r} is missing')
  return data


def piano_roll(piece, where: str = 'piece') -> np.ndarray:
  """A piece (frames, each an iterable of MIDI pitches) -> float32 [frames, 88] of 0/1.

  A pitch outside 21-108 raises ValueError naming ``where`` and the frame."""
  roll = np.zeros((len(piece), PITCHES), np.float32)
  for t, frame in enumerate(piece):
    for pitch in frame:
      if not LOWEST <= pitch <= HIGHEST or pitch != int(pitch):
        raise ValueError(f'{where}, frame {t}: pitch {pitch!r} is not a MIDI pitch of the '
                         f'piano ({LOWEST}-{HIGHEST})')
      roll[t, int(pitch) - LOWEST] = 1.0
  return roll


def examples(pieces: list, where: str) -> arrays.Examples:
  """Pieces -> inputs frames 0..T-2, targets frames 1..T-1 (float32 [n, time, 88],
  zero-padded) and lengths int32 [n] (T - 1 each)."""
  rolls = [piano_roll(p, f'{where}, piece {i}') for i, p in enumerate(pieces)]
  short = [i for i, r in enumerate(rolls) if len(r) < 2]
  if short:
    raise ValueError(f'{where}, piece {short[0]}: a piece needs at least 2 frames (one input '
                     f'and its next frame), got {len(rolls[short[0]])}')
  inputs, lengths = arrays.pad_sequences([r[:-1] for r in rolls])
  targets, _ = arrays.pad_sequences([r[1:] for r in rolls])
  return arrays.Examples(inputs=inputs, targets=targets, lengths=lengths)


def score_frames(score) -> list[tuple]:
  """A music21 score -> its frames at quarter-note resolution (module docstring)."""
  frames = [set() for _ in range(int(np.ceil(float(score.highestTime))))]
  for note in score.flatten().notes:
    start = float(note.offset)
    for k in range(int(np.ceil(start)), int(np.ceil(start + float(note.quarterLength)))):
      frames[k].update(p.midi for p in note.pitches)
  return [tuple(sorted(f)) for f in frames]


def chorale_files() -> list:
  """The paths of the Bach chorales music21 ships, sorted by file name."""
  from music21 import corpus  # pylint: disable=g-import-not-at-top
  paths = [p for p in corpus.getComposer('bach')
           if p.suffix == '.mxl' and p.stem not in NOT_CHORALES]
  return sorted(paths, key=lambda p: p.name)


def make_chorales(path: str, pieces: int = 0) -> dict[str, list]:
  """Parses the music21 chorales (the first ``pieces`` if > 0) into the standard layout,
  split by sorted position (module docstring), and writes it to ``path``."""
  try:
    from music21 import converter  # pylint: disable=g-import-not-at-top
  except ImportError:
    raise ValueError("task.path='' reads the Bach chorales of music21: pip install -e "
                      "'.[data]', or set task.path to a pickle such as "
                      'JSB_Chorales.pickle') from None
  files = chorale_files()[:pieces or None]
  data = {'train': [], 'valid': [], 'test': []}
  for i, file in enumerate(files):
    key = {8: 'valid', 9: 'test'}.get(i % 10, 'train')
    data[key].append(score_frames(converter.parse(file)))
  os.makedirs(os.path.dirname(path) or '.', exist_ok=True)
  with open(path + '.tmp', 'wb') as f:
    pickle.dump(data, f)
  os.replace(path + '.tmp', path)  # a reader never sees half a file
  return data


def chorales_path(cache_dir: str, pieces: int) -> str:
  name = 'music21_chorales' + (f'_first{pieces}' if pieces else '') + '.pickle'
  return os.path.join(base.cache_dir(cache_dir), name)


def frequency_baseline(train: arrays.Examples, test: arrays.Examples) -> float:
  """Test NLL per step of independent pitches, each on with its add-one smoothed
  frequency p_k = (on_k + 1) / (frames + 2) over the training target frames."""
  def valid_frames(e):
    return e.targets[np.arange(e.targets.shape[1])[None, :] < e.lengths[:, None]]
  frames = valid_frames(train)
  p = (frames.sum(0, dtype=np.float64) + 1.0) / (len(frames) + 2.0)
  y = valid_frames(test).astype(np.float64)
  return float(-(y * np.log(p) + (1 - y) * np.log1p(-p)).sum(-1).mean())


@dataclasses.dataclass(frozen=True, eq=False)
class Music:
  """Piano-roll pieces: inputs and targets float32 [batch, time, 88], lengths int32
  [batch]; ``splits`` holds 'train', 'eval' (validation) and 'test'."""
  seed: int
  splits: arrays.Splits

  @functools.cached_property
  def baseline(self) -> float:
    return frequency_baseline(self.splits.train, self.splits.test)

  @property
  def spec(self) -> base.Spec:
    return base.Spec(input_vocab=0, input_features=PITCHES, target='steps', num_outputs=PITCHES,
                     loss='bernoulli', metric='nll', baseline=self.baseline, causal=True)

  def batch(self, split: str, step: int, batch_size: int) -> dict[str, np.ndarray]:
    """inputs, targets [B, T, 88], lengths [B], example_weight [B] (see ``arrays``)."""
    return self.splits.batch(self.seed, split, step, batch_size)

  def num_eval_batches(self, batch_size: int, split: str = 'eval') -> int:
    return self.splits.num_batches(batch_size, split)


def load(path: str, cache_dir: str, pieces: int) -> arrays.Splits:
  """The splits of ``task.path``, or of the music21 chorales (made on first use)."""
  if path:
    if pieces:
      raise ValueError('task.pieces applies to the music21 chorales only (task.path=\'\'); '
                       f'set it to 0 to read {path}')
    data, where = read_pickle(path), path
  else:
    where = chorales_path(cache_dir, pieces)
    data = read_pickle(where) if os.path.exists(where) else make_chorales(where, pieces)
  splits = {s: examples(data[k], f'{where} [{k!r}]') for s, k in SPLIT_KEYS.items()}
  length = max(e.inputs.shape[1] for e in splits.values())
  return arrays.Splits(**{s: _pad_to(e, length) for s, e in splits.items()})


def _pad_to(e: arrays.Examples, length: int) -> arrays.Examples:
  """Zero-pads the time axis of inputs and targets to ``length``."""
  pad = ((0, 0), (0, length - e.inputs.shape[1]), (0, 0))
  return dataclasses.replace(e, inputs=np.pad(e.inputs, pad), targets=np.pad(e.targets, pad))


def from_config(task_cfg, seed: int) -> Music:
  """``task.path`` ('' = the music21 chorales), ``task.cache_dir`` ('' = ``base.cache_dir``),
  ``task.pieces`` (0 = all chorales)."""
  cfg = base.read_config(task_cfg, {'path': '', 'cache_dir': '', 'pieces': 0})
  base.check_int('task.pieces', cfg['pieces'], minimum=0)
  base.check_int('seed', seed, minimum=0)
  if cfg['pieces'] and not cfg['path'] and cfg['pieces'] < 10:
    raise ValueError(f'task.pieces={cfg["pieces"]} leaves no test piece; take at least 10 '
                     '(every tenth is a test piece), or 0 for all')
  return Music(seed, load(cfg['path'], cfg['cache_dir'], cfg['pieces']))


# --- MIDI -------------------------------------------------------------------------------
TICKS_PER_FRAME = 480  # the file's division: ticks per quarter note, one frame a quarter


def write_midi(path: str, roll: np.ndarray, tempo_bpm: float = 100.0) -> None:
  """Writes a piano roll [frames, 88] (nonzero = on) as a standard MIDI file (format 0,
  one track, channel 0, velocity 80): each run of consecutive frames in which a pitch is
  on becomes one note, one frame lasting a quarter note at ``tempo_bpm``."""
  roll = np.asarray(roll) != 0
  if roll.ndim != 2 or roll.shape[1] != PITCHES:
    raise ValueError(f'a piano roll must be [frames, {PITCHES}], got shape {roll.shape}')
  padded = np.pad(roll, ((1, 1), (0, 0))).astype(np.int8)
  change = np.diff(padded, axis=0)  # +1 where a run starts, -1 one past its end
  events = sorted((t * TICKS_PER_FRAME, int(change[t, k] > 0), k + LOWEST)
                  for t, k in zip(*np.nonzero(change)))  # note-offs before note-ons
  track, now = bytearray(b'\x00\xff\x51\x03' + round(6e7 / tempo_bpm).to_bytes(3, 'big')), 0
  for tick, on, pitch in events:
    track += _varlen(tick - now) + bytes([0x90 if on else 0x80, pitch, 80 if on else 0])
    now = tick
  track += b'\x00\xff\x2f\x00'  # end of track
  with open(path, 'wb') as f:
    f.write(b'MThd' + struct.pack('>IHHH', 6, 0, 1, TICKS_PER_FRAME))
    f.write(b'MTrk' + struct.pack('>I', len(track)) + bytes(track))


def _varlen(value: int) -> bytes:
  """MIDI's variable-length quantity: 7 bits a byte, most significant first, the high
  bit set on every byte but the last."""
  out = [value & 0x7F]
  while value > 0x7F:
    value >>= 7
    out.append(0x80 | (value & 0x7F))
  return bytes(reversed(out))

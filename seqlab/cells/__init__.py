"""Recurrent cells, chosen by name.

``CELLS`` maps each config name to a constructor ``(hidden_size, **options) -> cell``.
"""
import functools

from seqlab.cells.base import step
from seqlab.cells.gru import GRU
from seqlab.cells.lstm import LSTM
from seqlab.cells.lru import LRU
from seqlab.cells.minrnn import MinGRU
from seqlab.cells.minrnn import MinLSTM
from seqlab.cells.rnn import SimpleRNN

CELLS = {
    'rnn': functools.partial(SimpleRNN, activation='tanh'),
    'irnn': functools.partial(SimpleRNN, activation='relu', recurrent_init='identity'),
    'lstm': LSTM,
    'gru': functools.partial(GRU, reset_after=True),            # PyTorch / cuDNN / Flax
    'gru_reset_after': functools.partial(GRU, reset_after=True),
    'gru_reset_before': functools.partial(GRU, reset_after=False),  # Cho et al. 2014
    'lru': LRU,          # Orvieto et al. 2023; diagonal linear: associative engine too
    'mingru': MinGRU,    # Feng et al. 2024
    'minlstm': MinLSTM,  # Feng et al. 2024
}


def make_cell(name: str, hidden_size: int, **options):
  """Builds the cell called ``name``; unknown names list the valid ones."""
  if name not in CELLS:
    raise ValueError(f'unknown cell {name!r}; choose one of: {", ".join(CELLS)}')
  if not isinstance(hidden_size, int) or hidden_size <= 0:
    raise ValueError(f'hidden_size must be a positive integer, got {hidden_size!r}')
  try:
    return CELLS[name](hidden_size, **options)
  except TypeError as e:
    raise ValueError(f'cell {name!r} does not take options {sorted(options)}: {e}') from None

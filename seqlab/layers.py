"""Recurrent layers as Flax linen modules: one direction, both, and a stack.

Flax holds the parameters (``init``/``apply``, pytrees); the time loop is
``seqlab.scan.run``. Every layer returns ``(outputs, final_carry)`` with outputs
[batch, time, features], zero at padded steps.
"""
from typing import Any, Mapping

import flax
import flax.linen as nn
import jax.numpy as jnp

from seqlab import cells
from seqlab import newton
from seqlab import scan as scan_lib

MERGES = ('concat', 'sum')


class RNN(nn.Module):
  """One cell scanned over time in one direction.

  ``__call__(xs [batch, time, in], lengths [batch] | None, initial_carry | None)``
  returns ``(ys [batch, time, hidden], final_carry)``.
  """
  cell: Any
  reverse: bool = False
  scan: scan_lib.ScanOptions = scan_lib.ScanOptions()

  @nn.compact
  def __call__(self, xs, lengths=None, initial_carry=None):
    scan_lib.check_inputs(xs, lengths)
    params = self.param('cell', self.cell.init, xs.shape[-1])
    carry, ys, stats = scan_lib.run(self.cell, params, xs, lengths=lengths,
                                    initial_carry=initial_carry, reverse=self.reverse,
                                    options=self.scan, with_stats=True)
    if not self.is_initializing():  # a training step collects them (newton.step_stats)
      for name, value in stats.items():
        self.sow(newton.COLLECTION, name, value)
    return ys, carry


def merge_directions(forward, backward, merge: str):
  """Combines [..., H] forward and backward outputs: 'concat' -> 2H, 'sum' -> H."""
  if merge == 'concat':
    return jnp.concatenate([forward, backward], axis=-1)
  if merge == 'sum':
    return forward + backward
  raise ValueError(f'unknown merge {merge!r}; choose one of: {", ".join(MERGES)}')


class Bidirectional(nn.Module):
  """A forward and a backward ``RNN`` over the same inputs; carry (forward, backward)."""
  cell: Any
  merge: str = 'concat'
  scan: scan_lib.ScanOptions = scan_lib.ScanOptions()

  @nn.compact
  def __call__(self, xs, lengths=None, initial_carry=None):
    fwd_c, bwd_c = (None, None) if initial_carry is None else initial_carry
    fwd, fwd_c = RNN(self.cell, scan=self.scan, name='forward')(xs, lengths, fwd_c)
    bwd, bwd_c = RNN(self.cell, reverse=True, scan=self.scan, name='backward')(xs, lengths, bwd_c)
    return merge_directions(fwd, bwd, self.merge), (fwd_c, bwd_c)


def check_choice(key: str, value, choices):
  if value not in choices:
    raise ValueError(f'{key}={value!r} is not valid; choose one of: {", ".join(map(str, choices))}')


class StackedRNN(nn.Module):
  """``num_layers`` recurrent layers, each one- or bidirectional.

  Dropout (rate ``dropout``) sits between layers and is off when ``deterministic``;
  ``residual`` adds each layer's input to its output where their sizes match, at
  valid steps only (padded outputs stay zero).
  ``__call__(xs [batch, time, in], lengths, initial_carry, deterministic)`` returns
  ``(ys [batch, time, D * hidden], carries)``, D = 2 for bidirectional with
  ``merge='concat'`` else 1, and carries a tuple with one carry per layer
  (a (forward, backward) pair for bidirectional layers).
  """
  cell: str = 'lstm'
  hidden_size: int = 128
  num_layers: int = 1
  bidirectional: bool = False
  merge: str = 'concat'
  dropout: float = 0.0
  residual: bool = False
  cell_options: Mapping[str, Any] = flax.core.FrozenDict()
  scan: scan_lib.ScanOptions = scan_lib.ScanOptions()  # how each layer loops over time

  def __post_init__(self):
    cell = self.make_cell()  # unknown cell names and options fail here, not at trace time
    if not isinstance(self.num_layers, int) or self.num_layers < 1:
      raise ValueError(f'num_layers must be a positive integer, got {self.num_layers!r}')
    check_choice('merge', self.merge, MERGES)
    if not 0.0 <= self.dropout < 1.0:
      raise ValueError(f'dropout must be in [0, 1), got {self.dropout!r}')
    self.scan.check(cell)
    super().__post_init__()

  def make_cell(self):
    return cells.make_cell(self.cell, self.hidden_size, **dict(self.cell_options))

  @property
  def output_size(self) -> int:
    both = self.bidirectional and self.merge == 'concat'
    return self.hidden_size * (2 if both else 1)

  def initial_carry(self, batch_size: int):
    """Zero carries for every layer, shaped as ``__call__`` returns them."""
    carry = self.make_cell().initial_carry((batch_size,))
    return tuple((carry, carry) if self.bidirectional else carry for _ in range(self.num_layers))

  @nn.compact
  def __call__(self, xs, lengths=None, initial_carry=None, deterministic=True):
    scan_lib.check_inputs(xs, lengths)
    cell = self.make_cell()
    carries = []
    for i in range(self.num_layers):
      if self.bidirectional:
        layer = Bidirectional(cell, merge=self.merge, scan=self.scan, name=f'layer_{i}')
      else:
        layer = RNN(cell, scan=self.scan, name=f'layer_{i}')
      ys, carry = layer(xs, lengths, None if initial_carry is None else initial_carry[i])
      carries.append(carry)
      if self.residual and ys.shape[-1] == xs.shape[-1]:
        # Only at valid steps: padded outputs stay zero (what 'mean' pooling relies on).
        ys = ys + (xs if lengths is None else
                   jnp.where(scan_lib.valid_mask(lengths, xs.shape[1]).T[..., None], xs, 0))
      if self.dropout > 0 and i < self.num_layers - 1:
        ys = nn.Dropout(self.dropout)(ys, deterministic=deterministic)
      xs = ys
    return xs, tuple(carries)

"""Sequence models built on ``StackedRNN``: classifier, tagger, language model.

One module covers the three shapes of use:
  target='sequence'  many-to-one: pool the encoder over time, then a linear head
                     (classification, sequence regression).
  target='steps'     many-to-many: a linear head on every step (tagging, per-step
                     regression, language modelling when inputs and outputs are tokens).
"""
from typing import Any, Callable, ClassVar, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from seqlab import layers

POOLS = ('last', 'mean', 'flatten')
TARGETS = ('sequence', 'steps')


def pool_outputs(pool, ys, lengths, final_h):
  """[batch, time, F] -> [batch, F'] by ``pool``.

  'last': each sequence's hidden state at its last valid step (``final_h``, for
  bidirectional layers the forward and backward final states merged); 'mean': mean
  over valid steps; 'flatten': every step's output concatenated (fixed length).
  """
  if pool == 'last':
    return final_h
  if pool == 'mean':
    if lengths is None:
      return ys.mean(axis=1)
    return ys.sum(axis=1) / jnp.maximum(lengths, 1)[:, None].astype(ys.dtype)
  if pool == 'flatten':
    return ys.reshape(ys.shape[0], -1)
  raise ValueError(f'unknown pool {pool!r}; choose one of: {", ".join(POOLS)}')


class Recurrence(NamedTuple):
  """A one-layer unidirectional many-to-one model (pool='last') read as one recurrence:
  outputs = head(cell.output(h_T)), h_T the final carry of
  ``scan.run(cell, cell_params, features(inputs), lengths=...)``."""
  cell: Any
  cell_params: Any
  features: Callable  # inputs -> float32 [batch, time, F]: what the cell reads
  head: Callable  # final hidden [batch, H] -> outputs [batch, num_outputs], float32


class SequenceModel(nn.Module):
  """Embedding (token inputs) or features -> ``StackedRNN`` -> linear head.

  ``__call__(inputs, lengths=None, initial_carry=None, deterministic=True)``:
    inputs: int tokens [batch, time] when ``vocab_size > 0``, else float
      features [batch, time, features].
    lengths: optional [batch] valid lengths.
  Returns ``(outputs, carries)``: outputs [batch, num_outputs] for
  target='sequence', [batch, time, num_outputs] for target='steps'.
  It does not decode (``decodes``): its eval metrics are the loss's alone.
  """
  decodes: ClassVar[bool] = False
  encoder: layers.StackedRNN
  num_outputs: int
  target: str = 'sequence'
  vocab_size: int = 0
  embed_dim: int = 0
  pool: str = 'last'
  dtype: Any = None

  def __post_init__(self):
    layers.check_choice('target', self.target, TARGETS)
    layers.check_choice('pool', self.pool, POOLS)
    if self.vocab_size > 0 and self.embed_dim <= 0:
      raise ValueError(f'token inputs need embed_dim > 0, got {self.embed_dim}')
    super().__post_init__()

  @nn.compact
  def __call__(self, inputs, lengths=None, initial_carry=None, deterministic=True):
    if self.vocab_size > 0:
      if inputs.ndim != 2:
        raise ValueError(f'token inputs must be [batch, time], got shape {tuple(inputs.shape)}')
      xs = nn.Embed(self.vocab_size, self.embed_dim, name='embed')(inputs)
    else:
      xs = inputs.astype(jnp.float32)
    ys, carries = self.encoder(xs, lengths, initial_carry, deterministic=deterministic)
    if self.target == 'sequence':
      ys = pool_outputs(self.pool, ys, lengths, self.final_hidden(carries[-1]))
    out = nn.Dense(self.num_outputs, dtype=self.dtype, name='head')(ys)
    return out.astype(jnp.float32), carries

  def initial_carry(self, batch_size: int):
    """The zero carries [batch_size, ...] of every layer: where stateful streams start."""
    return self.encoder.initial_carry(batch_size)

  def recurrence(self, params) -> Recurrence | None:
    """This model with ``params`` as one ``Recurrence``; None unless it is one layer,
    unidirectional, target='sequence' and pool='last'."""
    enc = self.encoder
    if self.target != 'sequence' or self.pool != 'last' or enc.num_layers != 1 or enc.bidirectional:
      return None
    p = params['params']
    embed = (lambda x: p['embed']['embedding'][x]) if self.vocab_size else (lambda x: x)
    return Recurrence(cell=enc.make_cell(), cell_params=p['encoder']['layer_0']['cell'],
                      features=lambda x: jnp.asarray(embed(x), jnp.float32),
                      head=lambda h: h @ p['head']['kernel'] + p['head']['bias'][None, :])

  def final_hidden(self, carry):
    """The last layer's final hidden state [batch, D * hidden] from its carry."""
    cell = self.encoder.make_cell()
    if self.encoder.bidirectional:
      fwd, bwd = carry
      return layers.merge_directions(cell.output(fwd), cell.output(bwd), self.encoder.merge)
    return cell.output(carry)

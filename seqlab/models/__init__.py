"""Sequence models, built from the ``model`` section of a config."""
import dataclasses

import jax.numpy as jnp

from seqlab import cells
from seqlab import layers
from seqlab import seq2seq_metrics
from seqlab.models import decode
from seqlab.models import seq2seq
from seqlab.models.lm import sample
from seqlab.models.sequence import POOLS, SequenceModel

DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}
HOIST = {'auto': None, 'on': True, 'off': False}
# Config keys passed to a cell when its dataclass has a field of that name.
CELL_OPTION_KEYS = ('forget_bias', 'kernel_init', 'recurrent_init')


def cell_options(model_cfg) -> dict:
  """The ``model`` config keys that the chosen cell takes, as keyword options; 'auto'
  leaves the cell's own default (``recurrent_init``: orthogonal, identity for irnn)."""
  layers.check_choice('model.cell', model_cfg.cell, tuple(cells.CELLS))
  probe = cells.make_cell(model_cfg.cell, 1)
  fields = {f.name for f in dataclasses.fields(probe)}
  return {k: model_cfg[k] for k in CELL_OPTION_KEYS
          if k in fields and k in model_cfg and model_cfg[k] != 'auto'}


def build_model(model_cfg, spec):
  """``model`` config + task ``Spec`` -> an uninitialised ``SequenceModel`` or ``Seq2Seq``.

  A causal task (``Spec.causal``, a language model) refuses a bidirectional encoder.
  """
  layers.check_choice('model.dtype', model_cfg.dtype, tuple(DTYPES))
  layers.check_choice('model.hoist', model_cfg.hoist, tuple(HOIST))
  if spec.causal and model_cfg.bidirectional:
    raise ValueError('model.bidirectional=True lets a language model see the next character '
                     'it predicts (its targets are its next inputs); set '
                     'model.bidirectional=False')
  dtype = DTYPES[model_cfg.dtype]
  encoder = layers.StackedRNN(
      cell=model_cfg.cell, hidden_size=model_cfg.hidden_size, num_layers=model_cfg.num_layers,
      bidirectional=model_cfg.bidirectional, merge=model_cfg.merge, dropout=model_cfg.dropout,
      residual=model_cfg.residual, cell_options=cell_options(model_cfg),
      hoist=HOIST[model_cfg.hoist], unroll=model_cfg.unroll or None,
      dtype=None if dtype == jnp.float32 else dtype, engine=model_cfg.engine,
      remat=model_cfg.remat)
  if spec.model == 'seq2seq':
    return seq2seq.from_config(model_cfg, spec, encoder)
  return SequenceModel(
      encoder=encoder, num_outputs=spec.num_outputs, target=spec.target,
      vocab_size=spec.input_vocab, embed_dim=model_cfg.embed_dim if spec.input_vocab else 0,
      pool=model_cfg.pool, dtype=None if dtype == jnp.float32 else dtype)


def decoded_metrics(model, params, task, batch_size: int, method: str = 'greedy',
                    beam_width: int = 4, length_penalty: float = 0.0) -> dict[str, float]:
  """The ``decode_*`` metrics of decoding the task's 'eval' split, if the model decodes
  (``model.decodes``), else {}: what training, populations and ``seqlab.evaluate``
  add to the loss's eval metrics.

  ``decode_token_error_rate`` is G2P's phoneme error rate (PER) and
  ``decode_sequence_error_rate`` its word error rate (WER); see ``seqlab.seq2seq_metrics``.
  Decoding is ``method`` ('greedy' or 'beam', with ``beam_width`` and the GNMT
  ``length_penalty``; see ``seqlab.models.decode``).
  """
  if not model.decodes:
    return {}
  rows, refs = decode.decode_split(model, params, task, batch_size, method=method,
                                   beam_width=beam_width, length_penalty=length_penalty)
  return seq2seq_metrics.logged(seq2seq_metrics.score(rows, refs))

"""Sequence models, built from the ``model`` (and ``seq2seq``) sections of a config."""
import contextlib
import dataclasses
import re

from seqlab import cells
from seqlab import config as config_lib
from seqlab import layers
from seqlab import scan
from seqlab import seq2seq_metrics
from seqlab.models import decode
from seqlab.models import seq2seq
from seqlab.models.lm import sample
from seqlab.models.lm import sample_frames
from seqlab.models.sequence import POOLS, SequenceModel

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


@contextlib.contextmanager
def config_keys(section: str, keys):
  """Prefixes ``section.`` to a ValueError raised inside whose message starts with one
  of ``keys``: the layers name their own fields, which are the section's config keys
  (``num_layers must be ...`` -> ``model.num_layers must be ...``)."""
  try:
    yield
  except ValueError as e:
    first = re.match(r'\w+', str(e))
    if first and first[0] in keys:
      raise ValueError(f'{section}.{e}') from None
    raise


def build_model(model_cfg, spec, seq2seq_cfg=None):
  """``model`` config + task ``Spec`` -> an uninitialised ``SequenceModel`` or ``Seq2Seq``.

  ``seq2seq_cfg``: the config's ``seq2seq`` section, for seq2seq tasks only (None:
  ``config.seq2seq_section()``'s defaults). A causal task (``Spec.causal``, a language
  model) refuses a bidirectional encoder. Every value is checked here, before tracing,
  with an error that names its config key.
  """
  options = scan.ScanOptions.from_config(model_cfg)
  if spec.causal and model_cfg.bidirectional:
    raise ValueError('model.bidirectional=True lets a language model see the next character '
                     'it predicts (its targets are its next inputs); set '
                     'model.bidirectional=False')
  if seq2seq_cfg is not None and spec.model != 'seq2seq':
    raise ValueError(f'config.seq2seq is set, but this task trains a {spec.model} model, not '
                     'a seq2seq one; remove the seq2seq section (only seq2seq tasks, e.g. '
                     'reverse and g2p, take it)')
  with config_keys('model', model_cfg):
    encoder = layers.StackedRNN(
        cell=model_cfg.cell, hidden_size=model_cfg.hidden_size,
        num_layers=model_cfg.num_layers, bidirectional=model_cfg.bidirectional,
        merge=model_cfg.merge, dropout=model_cfg.dropout, residual=model_cfg.residual,
        cell_options=cell_options(model_cfg), scan=options)
  if spec.model == 'seq2seq':
    seq2seq_cfg = seq2seq_cfg or config_lib.seq2seq_section()
    with config_keys('seq2seq', seq2seq_cfg):
      return seq2seq.from_config(model_cfg, seq2seq_cfg, spec, encoder)
  with config_keys('model', model_cfg):
    return SequenceModel(
        encoder=encoder, num_outputs=spec.num_outputs, target=spec.target,
        vocab_size=spec.input_vocab, embed_dim=model_cfg.embed_dim if spec.input_vocab else 0,
        pool=model_cfg.pool, dtype=options.dtype)


def decoded_metrics(model, params, task, batch_size: int, method: str = 'greedy',
                    beam_width: int = 4, length_penalty: float = 0.0,
                    split: str = 'eval') -> dict[str, float]:
  """The ``decode_*`` metrics of decoding the task's held-out ``split``, if the model decodes
  (``model.decodes``), else {}: what training, populations and ``seqlab.evaluate``
  add to the loss's eval metrics.

  ``decode_token_error_rate`` is G2P's phoneme error rate (PER) and
  ``decode_sequence_error_rate`` its word error rate (WER); see ``seqlab.seq2seq_metrics``.
  Decoding is ``method`` ('greedy' or 'beam', with ``beam_width`` and the GNMT
  ``length_penalty``; see ``seqlab.models.decode``).
  """
  if not model.decodes:
    return {}
  rows, refs = decode.decode_split(model, params, task, batch_size, split, method=method,
                                   beam_width=beam_width, length_penalty=length_penalty)
  return seq2seq_metrics.logged(seq2seq_metrics.score(rows, refs))

"""Sequence to sequence: a recurrent encoder, and a recurrent decoder fed its previous token.

The encoder is any ``StackedRNN`` (stacked, bidirectional) over embedded source tokens;
its outputs ``h_j`` [batch, src_time, M] are the memory. The decoder is ``num_layers``
cells of ``seqlab.cells``; at step t it reads the embedding e_t of its previous token
(BOS first) and, with attention, a context ``c = sum_j a_j h_j`` over valid source
steps only (padded steps get weight exactly 0):

  'none'           Sutskever et al. 2014: s_t = cell(s_{t-1}, e_t); logits = W_o s_t.
  'bahdanau'       Bahdanau et al. 2015 (additive): a = softmax_j(v . tanh(W s_{t-1} +
                   U h_j + b)); s_t = cell(s_{t-1}, [e_t; c]); logits = W_o [s_t; c].
  'luong_dot'      Luong et al. 2015 (multiplicative), after the step: s_t = cell(s_{t-1},
  'luong_general'  e_t); a = softmax_j(s_t . h_j) (dot) or softmax_j(s_t . W_a h_j)
                   (general); h~ = tanh(W_c [c; s_t]); logits = W_o h~. (No input feeding.)

The decoder's initial state is the encoder's final state: passed as it is when both
have the same cell, size and layers and the encoder is unidirectional, else through a
bridge, ``tanh(W h_T + b)`` for every leaf of every decoder layer's carry, with h_T the
encoder's last-layer final hidden state (forward and backward concatenated).

``Decoder`` holds the decoder as pure functions over a parameter dict (like a cell);
``Seq2Seq`` is the Flax module that owns the parameters and runs the loop over target
time (teacher forcing, with an optional scheduled-sampling rate, Bengio et al. 2015).
Its methods ``encode`` and ``step`` are what ``seqlab.models.decode`` searches with.
The decoder computes in float32.
"""
import dataclasses
from typing import Any, ClassVar

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp

from seqlab import cells
from seqlab import layers
from seqlab import scan
from seqlab.models import decode

ATTENTIONS = ('none', 'bahdanau', 'luong_dot', 'luong_general')
NEG = -1e30  # score of padded source steps: exp(NEG - max) is exactly 0 in float32


def _dense_init(key, fan_in: int, fan_out: int):
  return jax.nn.initializers.glorot_uniform()(key, (fan_in, fan_out), jnp.float32)


def _add_bias(x, bias):
  """x [..., n] + bias [n], the broadcast written out (no implicit rank promotion)."""
  return x + bias.reshape((1,) * (x.ndim - 1) + bias.shape)


def _width(fn, *args) -> int:
  """The last-axis size of ``fn(*args)``, from shapes alone."""
  return jax.eval_shape(fn, *args).shape[-1]


@dataclasses.dataclass(frozen=True)
class Decoder:
  """The decoder's parameters and one step, as pure functions. State: a tuple of carries.

  cell: a ``seqlab.cells`` cell (hidden H); num_layers: cells stacked per step;
  vocab_size: target tokens V; embed_dim: E; memory_size: the encoder's output size M;
  bridge_size: 0 to start from the encoder's carries as they are, else the size of the
  encoder's final hidden state that a dense layer maps to the initial carries.
  """
  cell: Any
  num_layers: int
  vocab_size: int
  embed_dim: int
  memory_size: int
  attention: str = 'bahdanau'
  bridge_size: int = 0

  def __post_init__(self):
    layers.check_choice('attention', self.attention, ATTENTIONS)
    h = self.cell.hidden_size
    if self.attention == 'luong_dot' and self.memory_size != h:
      raise ValueError(f"attention='luong_dot' needs the decoder's hidden size ({h}) to equal "
                       f"the encoder's output size ({self.memory_size}); use "
                       "'luong_general' or matching sizes")
    leaves = jax.tree.leaves(self.cell.initial_carry((1,)))
    if self.bridge_size and any(jnp.iscomplexobj(l) for l in leaves):
      raise ValueError(f'a {type(self.cell).__name__} decoder has a complex carry, which the '
                       'bridge cannot produce: use the same cell, size and layers as a '
                       'unidirectional encoder so the carries pass as they are')

  @property
  def features_size(self) -> int:
    """Size of what the output layer reads: s_t, [s_t; c] (bahdanau) or h~ (luong)."""
    return self.cell.hidden_size + (self.memory_size if self.attention == 'bahdanau' else 0)

  def init(self, key):
    """Parameters: 'embed' [V, E], 'layer_i' (cells), attention, bridge, 'out_*'."""
    cell, h, m = self.cell, self.cell.hidden_size, self.memory_size
    keys = iter(jax.random.split(key, 2 * self.num_layers + 12))
    params = {'embed': jax.random.normal(next(keys), (self.vocab_size, self.embed_dim))
                       / jnp.sqrt(self.embed_dim)}
    for i in range(self.num_layers):
      params[f'layer_{i}'] = cell.init(next(keys), self.embed_dim if i == 0 else h)
    if self.attention == 'bahdanau':
      proj = _width(cell.project, params['layer_0'], jnp.zeros((self.embed_dim,)))
      query = _width(cell.output, cell.initial_carry(()))
      params.update(context=_dense_init(next(keys), m, proj),
                    query=_dense_init(next(keys), query, h), key=_dense_init(next(keys), m, h),
                    key_bias=jnp.zeros((h,)),
                    score=jax.random.normal(next(keys), (h,)) / jnp.sqrt(h))
    if self.attention == 'luong_general':
      params['key'] = _dense_init(next(keys), m, h)
    if self.attention in ('luong_dot', 'luong_general'):
      params['combine'] = _dense_init(next(keys), m + h, h)
    if self.bridge_size:
      sizes = [l.shape[-1] for l in jax.tree.leaves(self.initial_zeros(()))]
      params['bridge'] = [{'kernel': _dense_init(k, self.bridge_size, n), 'bias': jnp.zeros((n,))}
                          for k, n in zip(jax.random.split(next(keys), len(sizes)), sizes)]
    params['out_kernel'] = _dense_init(next(keys), self.features_size, self.vocab_size)
    params['out_bias'] = jnp.zeros((self.vocab_size,))
    return params

  def initial_zeros(self, batch_shape):
    return tuple(self.cell.initial_carry(batch_shape) for _ in range(self.num_layers))

  def bridge(self, params, final_hidden):
    """Encoder final hidden [batch, bridge_size] -> the decoder's initial state."""
    zeros = self.initial_zeros(final_hidden.shape[:1])
    leaves = [jnp.tanh(_add_bias(final_hidden @ p['kernel'], p['bias'])) for p in params['bridge']]
    return jax.tree.unflatten(jax.tree.structure(zeros), leaves)

  def memory(self, params, values, lengths):
    """Encoder outputs [batch, S, M], lengths [batch] -> what attention reads.

    {'values' [batch, S, M], 'keys' [batch, S, H] (bahdanau: U h_j + b; general:
    W_a h_j), 'mask' [batch, S] bool}; empty for 'none'.
    """
    if self.attention == 'none':
      return {}
    mem = {'values': values, 'mask': scan.valid_mask(lengths, values.shape[1]).T}
    if self.attention == 'bahdanau':
      mem['keys'] = _add_bias(values @ params['key'], params['key_bias'])
    elif self.attention == 'luong_general':
      mem['keys'] = values @ params['key']
    return mem

  def attend(self, params, query, memory):
    """query [batch, Q] -> (context [batch, M], weights [batch, S], 0 on padding)."""
    if self.attention == 'bahdanau':
      hidden = jnp.tanh(memory['keys'] + (query @ params['query'])[:, None, :])
      scores = hidden @ params['score']  # [batch, S]
    else:
      keys = memory['values'] if self.attention == 'luong_dot' else memory['keys']
      scores = jnp.einsum('bsh,bh->bs', keys, query)
    weights = jax.nn.softmax(jnp.where(memory['mask'], scores, NEG), axis=-1)
    return jnp.einsum('bs,bsm->bm', weights, memory['values']), weights

  def embed_project(self, params, tokens):
    """Tokens [...] -> layer 0's projected input ``project(embed[tokens])`` [..., P]."""
    return self.cell.project(params['layer_0'], params['embed'][tokens])

  def step(self, params, state, pe_t, memory):
    """One step: (state, pe_t [batch, P] from ``embed_project``, memory) ->
    (state, features [batch, features_size], weights [batch, S] or None).

    Bahdanau's input [e_t; c] is projected as project(e_t) + c @ W_ctx: every cell's
    ``project`` is affine, so this is the cell's projection of the concatenation.
    """
    cell, weights, context = self.cell, None, None
    if self.attention == 'bahdanau':
      context, weights = self.attend(params, cell.output(state[-1]), memory)
      pe_t = pe_t + context @ params['context']
    new, x = [], None
    for i, carry in enumerate(state):
      px = pe_t if i == 0 else cell.project(params[f'layer_{i}'], x)
      carry, x = cell.recur(params[f'layer_{i}'], carry, px)
      new.append(carry)
    if self.attention == 'bahdanau':
      features = jnp.concatenate([x, context], axis=-1)
    elif self.attention == 'none':
      features = x
    else:
      context, weights = self.attend(params, x, memory)
      features = jnp.tanh(jnp.concatenate([context, x], axis=-1) @ params['combine'])
    return tuple(new), features, weights

  def logits(self, params, features):
    """[..., features_size] -> [..., V] float32."""
    return _add_bias(features @ params['out_kernel'], params['out_bias'])


class Seq2Seq(nn.Module):
  """Encoder-decoder over token sequences; see the module docstring.

  ``__call__(inputs [batch, S] int, lengths [batch], decoder_inputs [batch, T] int,
  deterministic=True)`` -> ``(logits [batch, T, V], attention [batch, T, S] or None)``.
  ``decoder_inputs`` is BOS then the targets shifted right; causal, so padding after
  the targets changes nothing before it. ``scheduled_sampling`` > 0 (training only,
  ``deterministic=False``, rng 'dropout') replaces each input after the first, with
  that probability, by a token drawn from the model's own previous output.
  ``dropout`` acts between encoder layers (the encoder's own) and on the features
  before the output layer. It decodes (``decodes``): its eval adds the decoded metrics
  (``seqlab.models.decoded_metrics``).
  """
  decodes: ClassVar[bool] = True
  encoder: layers.StackedRNN
  decoder: Decoder
  src_vocab: int
  embed_dim: int
  dropout: float = 0.0
  scheduled_sampling: float = 0.0
  hoist: bool | None = None

  def __post_init__(self):
    if not 0.0 <= self.scheduled_sampling <= 1.0:
      raise ValueError(f'scheduled_sampling must be in [0, 1], got {self.scheduled_sampling!r}')
    if self.decoder.memory_size != self.encoder.output_size:
      raise ValueError(f'decoder.memory_size={self.decoder.memory_size} must equal the '
                       f"encoder's output size {self.encoder.output_size}")
    super().__post_init__()

  def setup(self):
    self.src_embed = nn.Embed(self.src_vocab, self.embed_dim)
    self.decoder_params = self.param('decoder', self.decoder.init)
    self.drop = nn.Dropout(self.dropout)

  def encode(self, inputs, lengths, deterministic=True):
    """Source tokens [batch, S], lengths [batch] -> (decoder state, memory)."""
    if inputs.ndim != 2 or tuple(lengths.shape) != inputs.shape[:1]:
      raise ValueError(f'expected inputs [batch, time] and lengths [batch], got shapes '
                       f'{tuple(inputs.shape)} and {tuple(lengths.shape)}')
    ys, carries = self.encoder(self.src_embed(inputs), lengths, deterministic=deterministic)
    memory = self.decoder.memory(self.decoder_params, ys, lengths)
    if not self.decoder.bridge_size:
      return tuple(carries), memory
    enc_cell, last = self.encoder.make_cell(), carries[-1]
    parts = [enc_cell.output(c) for c in (last if self.encoder.bidirectional else (last,))]
    return self.decoder.bridge(self.decoder_params, jnp.concatenate(parts, axis=-1)), memory

  def step(self, state, tokens, memory):
    """One decoding step: tokens [batch] -> (state, logits [batch, V], weights or None)."""
    pe = self.decoder.embed_project(self.decoder_params, tokens)
    state, features, weights = self.decoder.step(self.decoder_params, state, pe, memory)
    return state, self.decoder.logits(self.decoder_params, features), weights

  def __call__(self, inputs, lengths, decoder_inputs, deterministic=True):
    if decoder_inputs.ndim != 2 or decoder_inputs.shape[0] != inputs.shape[0]:
      raise ValueError(f'decoder_inputs must be [batch, time] with batch {inputs.shape[0]}, got '
                       f'shape {tuple(decoder_inputs.shape)}')
    state, memory = self.encode(inputs, lengths, deterministic)
    features, weights = self.teacher_forced(state, memory, decoder_inputs, deterministic)
    features = self.drop(features, deterministic=deterministic)
    return self.decoder.logits(self.decoder_params, features), weights

  def teacher_forced(self, state, memory, decoder_inputs, deterministic):
    """The loop over target time -> (features [batch, T, F], weights [batch, T, S] | None)."""
    dec, params = self.decoder, self.decoder_params
    sampling = self.scheduled_sampling > 0 and not deterministic
    hoist = (scan.default_hoist() if self.hoist is None else self.hoist) and not sampling
    tokens = decoder_inputs.T  # [T, batch]
    pe = dec.embed_project(params, tokens) if hoist else tokens  # [T, batch, P] or tokens
    if sampling:
      rng = self.make_rng('dropout')
      use_model = jax.random.uniform(jax.random.fold_in(rng, 0), tokens.shape)
      use_model = (use_model < self.scheduled_sampling).at[0].set(False)  # BOS stays
      keys = jax.random.split(jax.random.fold_in(rng, 1), tokens.shape[0])
    else:
      use_model, keys = None, None

    def body(carry, xs):
      state, previous = carry
      x_t, use_t, key_t = xs
      if sampling:
        x_t = jnp.where(use_t, previous, x_t)
      pe_t = x_t if hoist else dec.embed_project(params, x_t)
      state, features, weights = dec.step(params, state, pe_t, memory)
      if sampling:
        # A token the decoder could emit: PAD and BOS masked, as in decoding.
        logp = decode.log_probs(jax.lax.stop_gradient(dec.logits(params, features)))
        previous = jax.random.categorical(key_t, logp, axis=-1).astype(tokens.dtype)
      return (state, previous), (features, weights)

    init = (state, tokens[0])
    _, (features, weights) = jax.lax.scan(body, init, (pe, use_model, keys))
    weights = None if weights is None else jnp.swapaxes(weights, 0, 1)
    return jnp.swapaxes(features, 0, 1), weights


def from_config(model_cfg, seq2seq_cfg, spec, encoder: layers.StackedRNN) -> Seq2Seq:
  """``model`` and ``seq2seq`` config sections + a seq2seq task's ``Spec`` + the built
  encoder -> ``Seq2Seq``.

  The decoder uses the encoder's cell and options; its hidden size is
  ``seq2seq.decoder_hidden_size`` or, when 0, the encoder's output size. The model is
  hashable (cell options frozen), so ``seqlab.models.decode`` can jit it statically.
  """
  for key, least in (('decoder_layers', 1), ('decoder_hidden_size', 0)):
    v = seq2seq_cfg[key]
    if not isinstance(v, int) or isinstance(v, bool) or v < least:
      raise ValueError(f'{key} must be an integer >= {least}, got {v!r}')
  encoder = encoder.clone(cell_options=flax.core.FrozenDict(encoder.cell_options))
  hidden = seq2seq_cfg.decoder_hidden_size or encoder.output_size
  cell = cells.make_cell(encoder.cell, hidden, **dict(encoder.cell_options))
  same = (not encoder.bidirectional and hidden == encoder.hidden_size
          and seq2seq_cfg.decoder_layers == encoder.num_layers)
  enc_cell = encoder.make_cell()
  final_size = _width(enc_cell.output, enc_cell.initial_carry(()))  # h_T of one direction
  decoder = Decoder(cell=cell, num_layers=seq2seq_cfg.decoder_layers,
                    vocab_size=spec.num_outputs, embed_dim=model_cfg.embed_dim,
                    memory_size=encoder.output_size, attention=seq2seq_cfg.attention,
                    bridge_size=0 if same else final_size * (2 if encoder.bidirectional else 1))
  return Seq2Seq(encoder=encoder, decoder=decoder, src_vocab=spec.input_vocab,
                 embed_dim=model_cfg.embed_dim, dropout=model_cfg.dropout,
                 scheduled_sampling=seq2seq_cfg.scheduled_sampling, hoist=encoder.scan.hoist)

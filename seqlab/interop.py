"""PyTorch's recurrent layers as seqlab layers: the same numbers, read across.

``from_torch`` turns a ``torch.nn.RNN`` / ``LSTM`` / ``GRU`` into a
``seqlab.layers.StackedRNN`` and its parameters; ``carries_to_torch`` turns the
layer's final carries into torch's ``h_n`` (and ``c_n``). Both gate orders already
match PyTorch's (LSTM i, f, g, o; GRU r, z, n, reset after), so each torch matrix
[gates * hidden, in] is our kernel transposed:

  weight_ih_l{k}[_reverse] [G*H, in] -> kernel           [in, G*H]
  weight_hh_l{k}[_reverse] [G*H, H]  -> recurrent_kernel [H, G*H]
  RNN, LSTM: bias = b_ih + b_hh      GRU: bias = b_ih, recurrent_bias = b_hh

PyTorch is an optional extra (``pip install 'seqlab[torch]'``) and is imported
only when a function here is called.
"""
import flax
import jax.numpy as jnp
import numpy as np

from seqlab import layers
from seqlab.cells.lstm import LSTM

# torch's ``mode`` -> (our cell name, cell options)
CELLS = {
    'RNN_TANH': ('rnn', {}),
    'RNN_RELU': ('rnn', {'activation': 'relu'}),
    'LSTM': ('lstm', {}),
    'GRU': ('gru', {}),  # reset after, with b_hh kept apart, as in PyTorch
}


def _import_torch():
  try:
    import torch
  except ImportError as e:
    raise ImportError("seqlab.interop needs PyTorch: pip install 'seqlab[torch]'") from e
  return torch


def _check_module(torch, module) -> None:
  """Raises when ``module`` is not a recurrent layer this module can read."""
  if not isinstance(module, torch.nn.RNNBase):
    raise TypeError(f'expected torch.nn.RNN, LSTM or GRU, got {type(module).__name__}')
  if module.mode not in CELLS:
    raise ValueError(f'unsupported mode={module.mode!r}; choose one of: {", ".join(CELLS)}')
  if getattr(module, 'proj_size', 0) > 0:
    raise ValueError(f'proj_size={module.proj_size} (projected LSTM) is not supported; '
                     f'only proj_size=0')


def _numpy(tensor) -> np.ndarray:
  return tensor.detach().cpu().double().numpy()


def _cell_params(module, layer: int, suffix: str):
  """The parameters of one direction (``suffix`` '' or '_reverse') of one layer."""
  def get(name):
    return _numpy(getattr(module, f'{name}_l{layer}{suffix}'))

  w_ih, w_hh = get('weight_ih'), get('weight_hh')  # [G*H, in], [G*H, H]
  if module.bias:
    b_ih, b_hh = get('bias_ih'), get('bias_hh')  # [G*H] each
  else:
    b_ih = b_hh = np.zeros(w_ih.shape[0])
  params = {'kernel': w_ih.T, 'recurrent_kernel': w_hh.T}
  if module.mode == 'GRU':
    params.update(bias=b_ih, recurrent_bias=b_hh)
  else:
    params.update(bias=b_ih + b_hh)
  return {k: jnp.asarray(v, jnp.float32) for k, v in params.items()}


def from_torch(module):
  """A ``StackedRNN`` and its parameters computing what ``module`` computes.

  Our layers are batch-major: ``layer.apply(params, xs, lengths=lengths)`` takes
  xs [batch, time, in] and returns ``(ys [batch, time, D * hidden], carries)``,
  D = 2 if ``module.bidirectional`` else 1, whatever ``module.batch_first`` says.
  For a module with ``batch_first=False`` transpose its [time, batch, in] inputs
  to [batch, time, in] first (and outputs back, if needed). With ``lengths`` the
  result is torch's packed-sequence result (``pack_padded_sequence(...,
  enforce_sorted=False)`` -> module -> ``pad_packed_sequence``): outputs zero past
  each length, final states at each sequence's last valid step; see
  ``carries_to_torch``. ``module.dropout`` becomes the layer's ``dropout``, which
  like torch's applies between layers in training only (``deterministic=False``).

  Args:
    module: a ``torch.nn.RNN`` (tanh or relu), ``torch.nn.LSTM`` or ``torch.nn.GRU``,
      any ``num_layers``, ``bidirectional``, ``batch_first`` and ``bias``.

  Returns:
    ``(layer, params)``: a ``seqlab.layers.StackedRNN`` and its variables
    ``{'params': {'layer_{k}': ...}}`` of float32 arrays.

  Raises:
    ImportError: PyTorch is not installed.
    TypeError: ``module`` is not a torch recurrent layer.
    ValueError: an attribute we cannot express, naming it (``proj_size > 0``).
  """
  torch = _import_torch()
  _check_module(torch, module)
  name, options = CELLS[module.mode]
  layer = layers.StackedRNN(cell=name, hidden_size=module.hidden_size,
                            num_layers=module.num_layers, bidirectional=module.bidirectional,
                            dropout=float(module.dropout),
                            cell_options=flax.core.FrozenDict(options))  # hashable: jit static
  tree = {}
  for k in range(module.num_layers):
    if module.bidirectional:
      tree[f'layer_{k}'] = {'forward': {'cell': _cell_params(module, k, '')},
                            'backward': {'cell': _cell_params(module, k, '_reverse')}}
    else:
      tree[f'layer_{k}'] = {'cell': _cell_params(module, k, '')}
  return layer, {'params': tree}


def carries_to_torch(layer, carries):
  """The final ``carries`` of ``layer.apply`` as torch's final states, in NumPy.

  Torch orders its states layer by layer, forward before backward:
  index ``k * D + d`` holds layer k, direction d (D = 2 if bidirectional else 1).

  Args:
    layer: the ``StackedRNN`` (e.g. from ``from_torch``) that returned ``carries``.
    carries: its final carries, one per layer ((forward, backward) if bidirectional).

  Returns:
    ``h_n`` [num_layers * D, batch, hidden] for RNN and GRU cells; ``(h_n, c_n)``,
    both that shape, for LSTM cells, as ``torch.nn.LSTM`` returns them.
  """
  cell = layer.make_cell()
  per_direction = [c for layer_carry in carries
                   for c in (layer_carry if layer.bidirectional else (layer_carry,))]
  h_n = np.stack([np.asarray(cell.output(c)) for c in per_direction])
  if not isinstance(cell, LSTM):
    return h_n
  c_n = np.stack([np.asarray(c[0]) for c in per_direction])  # LSTM carry is (c, h)
  return h_n, c_n

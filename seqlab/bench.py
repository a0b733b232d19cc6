"""Training-step speed and memory of seqlab's recurrent layers, beside Flax and PyTorch.

  python -m seqlab.bench                             # lstm, gru, rnn at the standard shapes
  python -m seqlab.bench --cells lstm --shapes 8x1024x256 --steps 5 --rounds 4 --json b.json
  python -m seqlab.bench --quick --json /tmp/b.json  # tiny shapes, a few seconds a cell
  python -m seqlab.bench --memory                    # temp memory of the step vs sequence length
  python -m seqlab.bench --crossover --cells mingru,lru  # scan.run's engines, narrow to wide
  python -m seqlab.bench --engines --cells gru,lstm   # sequential vs Newton vs T and hidden

A training step is forward, backward and an Adam update of a recurrent layer under a
linear head with an MSE loss, on inputs [batch, time, input] (shapes are given as
batch x time x hidden). seqlab's ``StackedRNN`` is measured with the input projection
hoisted out of the loop and inside it (its default on CPU); on CPU an LSTM, Elman RNN or
(cuDNN-convention) GRU runs ``scan.fused`` either way, whose backward loop holds one
matmul per step, and a third row, ``seqlab autodiff``, is the same layer through
autodiff of the plain scan (``fuse=False``, projection inside the loop). On a GPU the
defaults are fused and hoisted and ``seqlab autodiff`` is hoisted too; on a TPU, where
autodiff is the default, the extra rows are ``seqlab fused`` with and without hoisting
(``seqlab_variants``). On a GPU/TPU the shapes add 64x512x1024 (``ACCELERATOR_SHAPES``).
The peers are Flax ``nn.RNN`` (OptimizedLSTMCell, GRUCell, SimpleCell) and PyTorch
``nn.LSTM``/``nn.GRU``/``nn.RNN`` (batch_first; on CPU with as many threads as XLA:CPU
uses, on a GPU cuDNN's kernels) when torch is installed.

Measurements are interleaved: in each round every implementation runs ``--steps``
steps, and the first round is thrown away (first-touch memory, caches), so machine
noise hits all alike. tokens/s = batch * time / median step time; compile time (the
first call: ``lower().compile()``) is reported apart. Ratios are tokens/s over the
peer's. GFLOP/s counts only the matmuls of the exact gradient (``step_matmul_flops``:
the work no implementation can skip), and "of dense" divides it by the rate of one
[1024, 1024] x [1024, 1024] matmul timed in the same rounds: near 1.0 an
implementation is as fast as this machine's matmuls allow, whatever it does.
``--memory`` reports XLA's compiled memory analysis (temp buffers) of the
step against sequence length, for a plain scan (remat k = 0) and for chunks of
k = sqrt(T) steps under ``jax.checkpoint`` (``scan.run(..., remat=k)``). ``--crossover``
times every engine of ``scan.run`` (``scan.Engine``) but Newton per cell and shape; ``--engines``
times the sequential and Newton engines (``seqlab.newton``: dense, diagonal, and the
associative adjoint) against length and hidden size, with Newton's iteration counts. The load
average before and after goes with the results: on a shared machine other processes
slow multi-threaded work most.
"""
if __name__ == '__main__':  # first, before jax imports: a Ctrl-C at any moment stops it
  from seqlab import signals  # pylint: disable=g-import-not-at-top
  signals.exit_until_caught('')
import dataclasses
import json
import math
import os
import platform
import statistics
import sys
import time
from typing import Any, Callable

from absl import app
from absl import flags
import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import jaxlib
import numpy as np
import optax

from seqlab import cli
from seqlab import cells
from seqlab import layers
from seqlab import scan
from seqlab import workdir as workdir_lib
from seqlab.tasks import arrays

CELLS = ('lstm', 'gru', 'rnn')  # the cells with peers; any of seqlab.cells.CELLS runs
PEERS = ('flax', 'torch')
DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}
SHAPES = ['32x128x256', '128x64x512', '8x1024x256']
ACCELERATOR_SHAPES = ['64x512x1024']  # added to SHAPES on a GPU/TPU: cuDNN's home ground
CROSSOVER_SHAPES = ['1x64x64', '1x1024x64', '8x64x256', '8x1024x256']  # narrow and wide steps
ENGINES_SHAPES = ['4x1000x4', '4x1000x32', '4x1000x256', '4x10000x4', '4x10000x32',
                  '4x100000x4']
QUICK = dict(shapes=['4x16x32'], input=16, steps=2, rounds=2, lengths=[64, 256], buckets=['2'])
VARLEN_SHAPES = ['32x128x256']  # --varlen: batch x longest (lognormal only) x hidden
VARLEN_SOURCES = ('lognormal', 'JapaneseVowels', 'PickupGestureWiimoteZ')
VARLEN_BATCHES = 8  # --varlen: an epoch is 8 x batch examples
LOGNORMAL_SIGMA = 0.45  # 256 draws of lognormal(0, 0.45) have longest / mean about 3

FLAGS = flags.FlagValues()  # our own: see seqlab.cli
_CELLS = flags.DEFINE_list('cells', list(CELLS), 'Cells to measure (seqlab.cells.CELLS; '
                           f'Flax and PyTorch peers exist for {", ".join(CELLS)}).',
                           flag_values=FLAGS)
_SHAPES = flags.DEFINE_list('shapes', SHAPES, 'Shapes, each batch x time x hidden '
                            f'(--crossover: default {",".join(CROSSOVER_SHAPES)}).',
                            flag_values=FLAGS)
_INPUT = flags.DEFINE_integer('input', 128, 'Input features.', flag_values=FLAGS)
_STEPS = flags.DEFINE_integer('steps', 5, 'Timed steps per implementation per round.',
                              flag_values=FLAGS)
_ROUNDS = flags.DEFINE_integer('rounds', 4, 'Rounds, the first a discarded warm-up.',
                               flag_values=FLAGS)
_PEERS = flags.DEFINE_list('peers', list(PEERS), f'Peers to compare with: {", ".join(PEERS)}.',
                           flag_values=FLAGS)
_DTYPE = flags.DEFINE_enum('dtype', 'float32', list(DTYPES), 'Compute dtype of the matmuls.',
                           flag_values=FLAGS)
_JSON = flags.DEFINE_string('json', None, 'Write the results and the machine here.',
                            flag_values=FLAGS)
_QUICK = flags.DEFINE_bool('quick', False, 'Tiny shapes and few steps (tests).',
                           flag_values=FLAGS)
_MEMORY = flags.DEFINE_bool('memory', False, 'Report temp memory of the step vs sequence length.',
                            flag_values=FLAGS)
_LENGTHS = flags.DEFINE_list('lengths', ['1000', '4000', '10000'],
                             'Sequence lengths for --memory (batch 8, hidden 256).',
                             flag_values=FLAGS)
_CROSSOVER = flags.DEFINE_bool('crossover', False, "Compare scan.run's engines vs length.",
                               flag_values=FLAGS)
_ENGINES = flags.DEFINE_bool('engines', False, 'Training-step time of the sequential and '
                             'Newton engines (and associative, for cells that have it) vs '
                             'length and hidden size, with Newton\'s iteration counts '
                             f'(default shapes {",".join(ENGINES_SHAPES)}).',
                             flag_values=FLAGS)
_VARLEN = flags.DEFINE_list('varlen', [], 'Variable-length mode: valid tokens/s with lengths '
                            f'from these sources ({", ".join(VARLEN_SOURCES)}, or a UEA/UCR '
                            'data set name): padded, length buckets, packed.', flag_values=FLAGS)
_BUCKETS = flags.DEFINE_list('buckets', ['4'], '--varlen: length bucket counts of the seqlab '
                             'buckets rows (train.length_buckets).', flag_values=FLAGS)

GATES = {'lstm': 4, 'gru': 3, 'rnn': 1}  # [B, H] x [H, GATES * H] per matmul
DENSE_N = 1024  # the reference: one jitted [N, N] x [N, N] matmul, interleaved with the rest
DENSE_N_ACCELERATOR = 8192  # on a GPU/TPU a 1024^3 matmul times its launch, not the chip
FLAX_CELLS = {'lstm': nn.OptimizedLSTMCell, 'gru': nn.GRUCell, 'rnn': nn.SimpleCell}
TORCH_CELLS = {'lstm': 'LSTM', 'gru': 'GRU', 'rnn': 'RNN'}


@dataclasses.dataclass(frozen=True)
class Shape:
  batch: int
  time: int
  hidden: int

  @classmethod
  def parse(cls, text: str) -> 'Shape':
    try:
      batch, time_, hidden = (int(n) for n in text.lower().split('x'))
    except ValueError:
      raise ValueError(f'shape {text!r} is not batch x time x hidden, e.g. 32x128x256') from None
    if min(batch, time_, hidden) < 1:
      raise ValueError(f'shape {text!r}: batch x time x hidden must be positive integers, '
                       'e.g. --shapes 32x128x256')
    return cls(batch, time_, hidden)

  def __str__(self):
    return f'{self.batch}x{self.time}x{self.hidden}'


@dataclasses.dataclass
class Impl:
  """One implementation ready to train: ``step()`` runs one blocking training step."""
  name: str
  step: Callable[[], None]
  compile_s: float | None  # None where there is nothing to compile (eager PyTorch)
  times: list = dataclasses.field(default_factory=list)


# --- The machine ------------------------------------------------------------------

def cpu_model() -> str:
  try:
    with open('/proc/cpuinfo') as f:
      for line in f:
        if line.startswith('model name'):
          return line.split(':', 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or platform.machine()


def core_count() -> int:
  """The cores this process may run on, which is what XLA:CPU sizes its pool by."""
  try:
    return len(os.sched_getaffinity(0))
  except AttributeError:
    return os.cpu_count() or 1


def torch_module():
  """``torch`` with its threads set to XLA's core count, or None when not installed.

  Its OpenMP threads sleep rather than spin between parallel regions (unless
  OMP_WAIT_POLICY is set already): spinning threads take the cores XLA's threads are
  about to use, and on a busy machine they wait for descheduled siblings (measured 8x
  slower steps with 2 threads on 2 shared cores).
  """
  os.environ.setdefault('OMP_WAIT_POLICY', 'PASSIVE')  # read when libgomp loads
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError:
    return None
  torch.set_num_threads(core_count())
  return torch


def torch_device(torch) -> str:
  """'cuda' when JAX runs on a GPU and torch sees one (cuDNN's RNNs), else 'cpu'."""
  if torch is not None and jax.default_backend() == 'gpu' and torch.cuda.is_available():
    return 'cuda'
  return 'cpu'


def accelerator(torch) -> dict | None:
  """What a GPU/TPU run compares on (None on CPU): the chip, each side's float32 matmul
  mode (JAX and cuDNN both default to TF32 on NVIDIA GPUs since Ampere) and cuDNN."""
  if jax.default_backend() == 'cpu':
    return None
  info = {'device_kind': jax.devices()[0].device_kind,
          'jax_default_matmul_precision': jax.config.jax_default_matmul_precision}
  if torch_device(torch) == 'cuda':
    info |= {'torch_device': torch.cuda.get_device_name(),
             'cudnn': torch.backends.cudnn.version(),
             'torch_cudnn_allow_tf32': torch.backends.cudnn.allow_tf32,
             'torch_matmul_allow_tf32': torch.backends.cuda.matmul.allow_tf32}
  return info


def machine(torch) -> dict:
  return {
      'cpu': cpu_model(),
      'cores': core_count(),
      'platform': platform.platform(),
      'load_average': os.getloadavg(),  # other processes on the machine skew every number
      'jax_backend': jax.default_backend(),
      'jax_devices': [str(d) for d in jax.devices()],
      'accelerator': accelerator(torch),
      'torch_threads': torch.get_num_threads() if torch else None,
      'omp_wait_policy': os.environ.get('OMP_WAIT_POLICY'),
      'versions': {
          'python': platform.python_version(),
          'jax': jax.__version__,
          'jaxlib': jaxlib.__version__,
          'flax': flax.__version__,
          'optax': optax.__version__,
          'numpy': np.__version__,
          'torch': torch.__version__ if torch else None,
      },
  }


# --- JAX implementations -------------------------------------------------------------

class SeqlabModel(nn.Module):
  """seqlab's ``StackedRNN`` (one layer) under a linear head: [B, T, I] -> [B, T, 1]."""
  cell: str
  hidden: int
  options: scan.ScanOptions = scan.ScanOptions()

  @nn.compact
  def __call__(self, xs, lengths=None):
    ys, _ = layers.StackedRNN(self.cell, self.hidden, scan=self.options)(xs, lengths)
    return nn.Dense(1)(ys)


class FlaxModel(nn.Module):
  """Flax's ``nn.RNN`` over its own cell under a linear head: [B, T, I] -> [B, T, 1];
  ``seq_lengths`` [B] stops each sequence's carry at its length."""
  cell: str
  hidden: int
  dtype: Any = None

  @nn.compact
  def __call__(self, xs, seq_lengths=None):
    cell = FLAX_CELLS[self.cell](self.hidden, dtype=self.dtype, param_dtype=jnp.float32)
    return nn.Dense(1)(nn.RNN(cell)(xs, seq_lengths=seq_lengths).astype(jnp.float32))


def mse_train_step(apply_fn, optimizer):
  """``(params, opt_state, xs, targets) -> (params, opt_state, loss)``: MSE, grad, update."""
  def loss_fn(params, xs, targets):
    return jnp.mean((apply_fn(params, xs) - targets) ** 2)

  def train_step(params, opt_state, xs, targets):
    loss, grads = jax.value_and_grad(loss_fn)(params, xs, targets)
    with jax.numpy_dtype_promotion('standard'):  # optax's adam: b1 ** its int32 count
      updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss
  return train_step


def data(shape: Shape, input_size: int):
  """Fixed random inputs [B, T, I] and targets [B, T, 1] (float32 numpy)."""
  rng = np.random.default_rng(0)
  xs = rng.standard_normal((shape.batch, shape.time, input_size), np.float32)
  targets = rng.standard_normal((shape.batch, shape.time, 1), np.float32)
  return xs, targets


def compile_timed(jitted, *args):
  """(``jitted`` compiled for ``args``, seconds it took to lower and compile)."""
  start = time.perf_counter()
  compiled = jitted.lower(*args).compile()
  return compiled, time.perf_counter() - start


def jax_impl(name: str, apply_fn, params, xs, targets) -> Impl:
  """Compiles the training step of ``apply_fn`` (timed) and keeps its state between steps."""
  optimizer = optax.adam(1e-3)
  state = [params, optimizer.init(params)]
  xs, targets = jnp.asarray(xs), jnp.asarray(targets)
  jitted = jax.jit(mse_train_step(apply_fn, optimizer), donate_argnums=(0, 1))
  compiled, compile_s = compile_timed(jitted, *state, xs, targets)

  def step():
    state[0], state[1], loss = compiled(*state, xs, targets)
    jax.block_until_ready((state, loss))
  return Impl(name, step, compile_s)


def flax_module_impl(name: str, model: nn.Module, xs, targets) -> Impl:
  params = model.init(jax.random.key(0), jnp.asarray(xs[:1]))
  return jax_impl(name, model.apply, params, xs, targets)


# --- PyTorch --------------------------------------------------------------------------

def torch_impl(torch, cell: str, shape: Shape, xs, targets, dtype: str) -> Impl:
  """``nn.LSTM``/``nn.GRU``/``nn.RNN`` (batch_first) + ``nn.Linear``, MSE, Adam.

  On the device ``torch_device`` picks: oneDNN's fused RNN on CPU, cuDNN's on a GPU
  (``step`` then waits for the GPU, as the JAX steps do). bfloat16 runs the forward
  under autocast (parameters stay float32).
  """
  device = torch_device(torch)
  torch.manual_seed(0)
  rnn = getattr(torch.nn, TORCH_CELLS[cell])(xs.shape[-1], shape.hidden, batch_first=True)
  head = torch.nn.Linear(shape.hidden, 1)
  rnn, head = rnn.to(device), head.to(device)
  params = list(rnn.parameters()) + list(head.parameters())
  optimizer = torch.optim.Adam(params, lr=1e-3)
  xs, targets = torch.from_numpy(xs).to(device), torch.from_numpy(targets).to(device)
  autocast = torch.autocast(device, dtype=torch.bfloat16, enabled=dtype == 'bfloat16')

  def step():
    optimizer.zero_grad(set_to_none=True)
    with autocast:
      ys, _ = rnn(xs)
      loss = torch.nn.functional.mse_loss(head(ys).float(), targets)
    loss.backward()
    optimizer.step()
    if device == 'cuda':
      torch.cuda.synchronize()
  return Impl('torch', step, None)


# --- Speed ----------------------------------------------------------------------------

def step_matmul_flops(cell: str, shape: Shape, input_size: int) -> int | None:
  """Matmul FLOPs of one training step of one layer under the linear head, or None.

  Per token, with G = GATES[cell] gate blocks of width H: forward x W [I, GH] and
  h U [H, GH]; backward dW = x^T dg, dU = h^T dg and dh = dg U^T (the inputs take no
  gradient); the head [H, 1] forward, its gradient and dh. Elementwise work is not
  counted: this is the work no implementation of the exact gradient can skip, whatever
  it hoists or defers.
  """
  if cell not in GATES:
    return None
  g, h, i = GATES[cell] * shape.hidden, shape.hidden, input_size
  return shape.batch * shape.time * (2 * g * (2 * i + 3 * h) + 6 * h)


def dense_size() -> int:
  return DENSE_N if jax.default_backend() == 'cpu' else DENSE_N_ACCELERATOR


def dense_impl(dtype: str) -> Impl:
  """One [n, n] matmul (``dense_size``): the machine's dense rate, measured beside the rest."""
  n = dense_size()
  a = jax.random.normal(jax.random.key(0), (n, n), DTYPES[dtype])
  compiled, compile_s = compile_timed(jax.jit(jnp.dot), a, a)
  return Impl('dense matmul', lambda: compiled(a, a).block_until_ready(), compile_s)


def dense_rate(dense: Impl) -> float:
  """FLOP/s of a measured ``dense_impl``."""
  return 2 * dense_size()**3 / statistics.median(dense.times)


def seqlab_variants(cell: str) -> list[tuple[str, bool, bool | None]]:
  """(name, hoist, fuse) of the seqlab rows: the default engine with the input projection
  hoisted and not, then, for cells ``scan.fused`` can run, the other engine: on CPU and
  GPU (default fused) 'seqlab autodiff' with the backend's default hoisting, on TPUs
  (default autodiff) 'seqlab fused' both ways, so that each backend's defaults are
  chosen by measurement."""
  rows = [(f'seqlab hoist={"on" if hoist else "off"}', hoist, None) for hoist in (True, False)]
  the_cell = cells.make_cell(cell, 8)
  if scan.default_fuse(the_cell):
    rows.append(('seqlab autodiff', scan.default_hoist(), False))
  elif scan.fusable(the_cell):
    rows += [(f'seqlab fused hoist={"on" if hoist else "off"}', hoist, True)
             for hoist in (True, False)]
  return rows


def build_impls(cell: str, shape: Shape, input_size: int, peers, dtype: str, torch):
  """The implementations for one (cell, shape), seqlab first."""
  xs, targets = data(shape, input_size)
  jdtype = None if dtype == 'float32' else DTYPES[dtype]
  options = lambda hoist, fuse: scan.ScanOptions(hoist=hoist, dtype=jdtype, fuse=fuse)
  impls = [flax_module_impl(name, SeqlabModel(cell, shape.hidden, options(hoist, fuse)),
                            xs, targets)
           for name, hoist, fuse in seqlab_variants(cell)]
  if 'flax' in peers and cell in FLAX_CELLS:
    impls.append(flax_module_impl('flax', FlaxModel(cell, shape.hidden, jdtype), xs, targets))
  if 'torch' in peers and torch is not None and cell in TORCH_CELLS:
    impls.append(torch_impl(torch, cell, shape, xs, targets, dtype))
  return impls


def measure(impls, steps: int, rounds: int) -> None:
  """Interleaved rounds; each implementation's step times after round 0 go to ``.times``."""
  for r in range(rounds):
    for impl in impls:
      for _ in range(steps):
        start = time.perf_counter()
        impl.step()
        if r > 0:
          impl.times.append(time.perf_counter() - start)


def speed_rows(cell: str, shape: Shape, impls, input_size: int,
               dense_flops_per_sec: float | None = None) -> list[dict]:
  """One result row per implementation, with ratios of tokens/s to each peer's and,
  given the machine's dense rate (``dense_rate``), each row's matmul rate over it."""
  tokens = shape.batch * shape.time
  flops = step_matmul_flops(cell, shape, input_size)
  tps = {i.name: tokens / statistics.median(i.times) for i in impls}
  rate = {n: None if flops is None else flops * t / tokens for n, t in tps.items()}
  return [{
      'cell': cell, 'shape': str(shape), 'batch': shape.batch, 'time': shape.time,
      'hidden': shape.hidden, 'impl': i.name, 'tokens_per_sec': tps[i.name],
      'median_step_s': statistics.median(i.times), 'step_times_s': i.times,
      'compile_s': i.compile_s,
      'ratio_vs_torch': tps[i.name] / tps['torch'] if 'torch' in tps else None,
      'ratio_vs_flax': tps[i.name] / tps['flax'] if 'flax' in tps else None,
      'step_matmul_flops': flops, 'matmul_flops_per_sec': rate[i.name],
      'dense_flops_per_sec': dense_flops_per_sec,
      'of_dense': (None if rate[i.name] is None or not dense_flops_per_sec
                   else rate[i.name] / dense_flops_per_sec),
  } for i in impls]


def run_speed(cells_, shapes, input_size, steps, rounds, peers, dtype, torch) -> list[dict]:
  rows = []
  for cell in cells_:
    for shape in shapes:
      log(f'{cell} {shape}: compiling')
      impls = build_impls(cell, shape, input_size, peers, dtype, torch)
      dense = dense_impl(dtype)
      log(f'{cell} {shape}: ' + ', '.join(f'{i.name} {i.compile_s or 0:.1f}s' for i in impls))
      measure(impls + [dense], steps, rounds)
      new = speed_rows(cell, shape, impls, input_size, dense_rate(dense))
      rows += new
      log(format_table(new, SPEED_COLUMNS, header=False))
  return rows


# --- Memory ---------------------------------------------------------------------------

def remat_chunk(time: int) -> int:
  """The chunk length ``--memory`` checkpoints with: about sqrt(time), which minimises
  the O(time / k + k) carries and residuals that the backward pass keeps."""
  return max(1, math.isqrt(time))


class CellModel(nn.Module):
  """``layers.RNN`` (lax.scan engine) over a cell under a linear head: [B, T, I] -> [B, T, 1]."""
  cell: Any
  hoist: bool
  remat: int = 0

  @nn.compact
  def __call__(self, xs):
    options = scan.ScanOptions(hoist=self.hoist, engine=scan.Engine.SEQUENTIAL, remat=self.remat)
    ys, _ = layers.RNN(self.cell, scan=options)(xs)
    return nn.Dense(1)(ys)


def dot_workspace_bytes(batch: int, hidden: int) -> int:
  """Temp bytes of a lone float32 [batch, hidden] x [hidden, 4 hidden] matmul: scratch
  that any program with such a dot carries, whatever its sequence length. 0 on CPU; on
  a GPU, the cuBLAS workspace XLA reserves (32 MiB on Hopper)."""
  a = jax.ShapeDtypeStruct((batch, hidden), jnp.float32)
  b = jax.ShapeDtypeStruct((hidden, 4 * hidden), jnp.float32)
  return jax.jit(jnp.dot).lower(a, b).compile().memory_analysis().temp_size_in_bytes


def memory_stats(model: nn.Module, shape: Shape, input_size: int) -> dict:
  """XLA's memory analysis of the compiled training step (nothing is run), with the
  fixed matmul scratch (``dot_workspace_bytes``) apart."""
  optimizer = optax.adam(1e-3)
  xs = jax.ShapeDtypeStruct((shape.batch, shape.time, input_size), jnp.float32)
  targets = jax.ShapeDtypeStruct((shape.batch, shape.time, 1), jnp.float32)
  params = jax.eval_shape(model.init, jax.random.key(0), xs)
  opt_state = jax.eval_shape(optimizer.init, params)
  step = jax.jit(mse_train_step(model.apply, optimizer), donate_argnums=(0, 1))
  m = step.lower(params, opt_state, xs, targets).compile().memory_analysis()
  peak = m.argument_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes
  return {'temp_bytes': m.temp_size_in_bytes, 'argument_bytes': m.argument_size_in_bytes,
          'peak_bytes': peak + m.temp_size_in_bytes,
          'workspace_bytes': dot_workspace_bytes(shape.batch, shape.hidden)}


def run_memory(cells_, lengths, batch, hidden, input_size) -> list[dict]:
  rows = []
  for cell_name in cells_:
    for t in lengths:
      shape = Shape(batch, t, hidden)
      for remat in (0, remat_chunk(t)):
        for hoist in (True, False):
          model = CellModel(cells.make_cell(cell_name, hidden), hoist, remat)
          stats = memory_stats(model, shape, input_size)
          rows.append({'cell': cell_name, 'shape': str(shape), 'time': t, 'remat': remat,
                       'hoist': hoist, **stats,
                       'temp_bytes_per_step': (stats['temp_bytes'] - stats['workspace_bytes']) / t})
      log(format_table(rows[-4:], MEMORY_COLUMNS, header=False))
  return rows


# --- Engine crossover -----------------------------------------------------------------

class EngineModel(nn.Module):
  """One cell through ``scan.run(..., engine=engine)`` under a linear head."""
  cell: Any
  engine: Any
  options: scan.ScanOptions = scan.ScanOptions()  # the rest (the Newton engine's settings)

  @nn.compact
  def __call__(self, xs):
    params = self.param('cell', self.cell.init, xs.shape[-1])
    _, ys = scan.run(self.cell, params, xs, engine=self.engine, options=self.options)
    return nn.Dense(1)(ys)


def run_crossover(cells_, shapes, input_size, steps, rounds) -> list[dict]:
  """Every ``scan.Engine`` on every (cell, shape), interleaved; n/a where it fails.
  The Newton engine is ``run_engines``' (``--engines``), with its settings."""
  rows = []
  for cell_name in cells_:
    for shape in shapes:
      hidden = shape.hidden
      xs, targets = data(shape, input_size)
      impls = []
      for engine in (e for e in scan.Engine if e is not scan.Engine.NEWTON):
        model = EngineModel(cells.make_cell(cell_name, hidden), engine)
        try:
          impls.append(flax_module_impl(engine.value, model, xs, targets))
        except (ValueError, NotImplementedError, TypeError) as e:
          log(f'{cell_name} {shape} engine {engine.value!r}: n/a ({e})')
      measure(impls, steps, rounds)
      best = min(impls, key=lambda i: statistics.median(i.times)).name if impls else None
      for row in speed_rows(cell_name, shape, impls, input_size):
        rows.append({k: row[k] for k in ('cell', 'shape', 'time', 'impl', 'tokens_per_sec',
                                         'compile_s')} | {'fastest': row['impl'] == best})
      log(format_table(rows[-len(impls):], CROSSOVER_COLUMNS, header=False))
  return rows


# --- Engines for the nonlinear cells ----------------------------------------------------

# --engines: (name, ScanOptions fields) of each row; 'associative' is n/a for the
# nonlinear cells and kept so that a cell with coefficients() gets its row.
ENGINE_VARIANTS = [
    ('sequential', dict(engine='sequential')),
    ('associative', dict(engine='associative')),
    ('newton dense', dict(engine='newton', newton_jacobian='dense')),
    ('newton diagonal', dict(engine='newton', newton_jacobian='diagonal')),
    ('newton diagonal, assoc. adjoint', dict(engine='newton', newton_jacobian='diagonal',
                                             newton_adjoint='associative')),
    ('newton diagonal, damped 1', dict(engine='newton', newton_jacobian='diagonal',
                                       newton_damping=1.0)),
]
# Rows whose [time, batch, D, D] Jacobians (dense Newton, or the associative adjoint)
# would hold more float32 words than this are skipped: 256 MiB, what one of several
# processes on a small machine can hold.
MAX_JACOBIAN_WORDS = 2**26


def newton_counts(cell, options: scan.ScanOptions, xs) -> dict:
  """The Newton engine's iterations and fallbacks on ``xs`` at the cell's initial
  parameters (those every timed step starts from), or {} for the other engines."""
  params = cell.init(jax.random.key(0), xs.shape[-1])
  run = jax.jit(lambda p, x: scan.run(cell, p, x, options=options, with_stats=True)[2])
  return {k: float(v) for k, v in run(params, jnp.asarray(xs)).items()}


def run_engines(cells_, shapes, input_size, steps, rounds) -> list[dict]:
  """Training-step time of every ``ENGINE_VARIANTS`` row per (cell, shape), interleaved,
  with the Newton rows' iteration counts; n/a where the engine cannot run the cell or
  the Jacobians would not fit (``MAX_JACOBIAN_WORDS``)."""
  rows = []
  for cell_name in cells_:
    for shape in shapes:
      the_cell = cells.make_cell(cell_name, shape.hidden)
      state = sum(c.size for c in jax.tree.leaves(the_cell.initial_carry((1,))))
      xs, targets = data(shape, input_size)
      impls, counts = [], {}
      for name, fields in ENGINE_VARIANTS:
        options = scan.ScanOptions(**fields)
        dense = fields.get('newton_jacobian') == 'dense' or 'newton_adjoint' in fields
        if dense and shape.time * shape.batch * state ** 2 > MAX_JACOBIAN_WORDS:
          log(f'{cell_name} {shape} {name}: n/a (Jacobians over {MAX_JACOBIAN_WORDS} words)')
          continue
        try:
          options.check(the_cell)
          impls.append(flax_module_impl(name, EngineModel(the_cell, options.engine, options),
                                        xs, targets))
          counts[name] = newton_counts(the_cell, options, xs)
        except ValueError as e:
          log(f'{cell_name} {shape} {name}: n/a ({e})')
      measure(impls, steps, rounds)
      seconds = {i.name: statistics.median(i.times) for i in impls}
      for impl in impls:
        rows.append({'cell': cell_name, 'shape': str(shape), 'time': shape.time,
                     'hidden': shape.hidden, 'impl': impl.name, 'step_s': seconds[impl.name],
                     'vs_sequential': seconds.get('sequential', math.nan) / seconds[impl.name],
                     'compile_s': impl.compile_s, **counts[impl.name]})
      log(format_table(rows[-len(impls):], ENGINES_COLUMNS, header=False))
  return rows


# --- Variable lengths -----------------------------------------------------------------

def varlen_lengths(source: str, shape: Shape, n: int) -> np.ndarray:
  """``n`` sequence lengths int32: drawn (fixed seed) from the training lengths of the
  UEA/UCR data set ``source`` (``tasks.uea``: the files aeon bundles or a --data_dir),
  or for 'lognormal' ``ceil(time * x / max x)``, x ~ lognormal(0, ``LOGNORMAL_SIGMA``)."""
  rng = np.random.default_rng(0)
  if source == 'lognormal':
    x = rng.lognormal(0.0, LOGNORMAL_SIGMA, n)
    return np.maximum(1, np.ceil(shape.time * x / x.max())).astype(np.int32)
  from seqlab.tasks import uea  # pylint: disable=g-import-not-at-top
  _, train, _ = uea.load(source, missing='ffill')
  return rng.choice(train.lengths, n).astype(np.int32)


def varlen_batches(lengths, batch: int, buckets: int) -> list[tuple[np.ndarray, np.ndarray]]:
  """One epoch over the examples ``lengths`` [n] as (example indices [B], weights [B])
  and padded length: in order, padded to the longest (``buckets`` 0), or the batches of
  epoch 0 of ``arrays.bucket_indices`` (each padded to its bucket's bound)."""
  if buckets == 0:
    longest = int(lengths.max())
    return [(np.arange(i, i + batch) % len(lengths), (np.arange(i, i + batch) < len(lengths))
             .astype(np.float32), longest) for i in range(0, len(lengths), batch)]
  bounds = arrays.bucket_bounds(lengths, buckets, batch)
  count = int(arrays.bucket_batches(lengths, bounds, batch)[1].sum())
  return [arrays.bucket_indices(0, s, batch, lengths, bounds) for s in range(count)]


def masked_mse_step(apply_fn, optimizer):
  """``(params, opt_state, xs, lengths, targets, weights) -> (params, opt_state, loss)``:
  the per-step MSE over valid steps (t < length) of rows of weight 1, grad, Adam."""
  def loss_fn(params, xs, lengths, targets, weights):
    mask = (jnp.arange(xs.shape[1])[None, :] < lengths[:, None]).astype(jnp.float32)
    mask = mask * weights[:, None]
    err = (apply_fn(params, xs, lengths) - targets)[..., 0]
    return jnp.sum(mask * err * err) / jnp.sum(mask)

  def train_step(params, opt_state, *data):
    loss, grads = jax.value_and_grad(loss_fn)(params, *data)
    with jax.numpy_dtype_promotion('standard'):  # optax's adam: b1 ** its int32 count
      updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss
  return train_step


def varlen_data(lengths, epoch, input_size: int) -> list[tuple]:
  """Host arrays (xs [B, T, I], lengths [B], targets [B, T, 1], weights [B]) of every
  batch of ``epoch`` (``varlen_batches``): random values, zero past each length."""
  rng = np.random.default_rng(1)
  out = []
  for rows, weights, t in epoch:
    valid = (np.arange(t)[None, :] < lengths[rows][:, None])[..., None]
    xs = rng.standard_normal((len(rows), t, input_size), np.float32) * valid
    targets = rng.standard_normal((len(rows), t, 1), np.float32) * valid
    out.append((xs, lengths[rows], targets, weights))
  return out


def varlen_jax_impl(name: str, model: nn.Module, data) -> Impl:
  """``masked_mse_step`` of ``model`` ((xs, lengths) -> [B, T, 1]) compiled once per
  distinct padded length (compile time summed); ``step()`` trains one epoch."""
  optimizer = optax.adam(1e-3)
  params = model.init(jax.random.key(0), jnp.asarray(data[0][0][:1]), jnp.asarray(data[0][1][:1]))
  state = [params, optimizer.init(params)]
  data = [tuple(jnp.asarray(a) for a in batch) for batch in data]
  jitted = jax.jit(masked_mse_step(model.apply, optimizer), donate_argnums=(0, 1))
  compiled, compile_s = {}, 0.0
  for batch in data:
    if batch[0].shape not in compiled:
      compiled[batch[0].shape], seconds = compile_timed(jitted, *state, *batch)
      compile_s += seconds

  def step():
    for batch in data:
      state[0], state[1], loss = compiled[batch[0].shape](*state, *batch)
    jax.block_until_ready((state, loss))
  return Impl(name, step, compile_s)


def varlen_torch_impl(torch, cell: str, hidden: int, data, packed: bool) -> Impl:
  """``torch_impl``'s layer and head over one epoch of ``data``: with ``packed`` through
  ``pack_padded_sequence(enforce_sorted=False)`` (only valid steps), else over the
  padded batch (every step: oneDNN's fused kernel on CPU); the masked MSE either way.
  On the device ``torch_device`` picks (cuDNN's packed kernels on a GPU)."""
  device = torch_device(torch)
  torch.manual_seed(0)
  rnn = getattr(torch.nn, TORCH_CELLS[cell])(data[0][0].shape[-1], hidden, batch_first=True)
  head = torch.nn.Linear(hidden, 1)
  rnn, head = rnn.to(device), head.to(device)
  optimizer = torch.optim.Adam(list(rnn.parameters()) + list(head.parameters()), lr=1e-3)
  utils = torch.nn.utils.rnn
  data = [tuple(torch.from_numpy(np.asarray(a)).to(device) for a in batch) for batch in data]

  def step():
    for xs, lengths, targets, weights in data:
      optimizer.zero_grad(set_to_none=True)
      if packed:
        ys, _ = rnn(utils.pack_padded_sequence(xs, lengths.long().cpu(), batch_first=True,
                                               enforce_sorted=False))
        ys, _ = utils.pad_packed_sequence(ys, batch_first=True, total_length=xs.shape[1])
      else:
        ys, _ = rnn(xs)
      steps = torch.arange(xs.shape[1], device=device)
      mask = (steps[None, :] < lengths[:, None]) * weights[:, None]
      loss = (mask * (head(ys)[..., 0] - targets[..., 0]) ** 2).sum() / mask.sum()
      loss.backward()
      optimizer.step()
    if device == 'cuda':
      torch.cuda.synchronize()
  return Impl('torch packed' if packed else 'torch padded', step, None)


def run_varlen(sources, cells_, shapes, input_size, steps, rounds, buckets, peers, torch
               ) -> list[dict]:
  """Valid tokens/s of a training epoch over variable-length examples (``varlen_lengths``,
  ``VARLEN_BATCHES`` x batch of them), every implementation on the same examples,
  interleaved (``measure``; one step = one epoch): seqlab padded to the longest and with
  each count of length ``buckets``, Flax ``nn.RNN`` with ``seq_lengths`` and PyTorch
  packed and padded (both padded to the longest)."""
  rows = []
  for source in sources:
    for shape in shapes:
      lengths = varlen_lengths(source, shape, VARLEN_BATCHES * shape.batch)
      epochs = {n: varlen_batches(lengths, shape.batch, n) for n in [0, *buckets]}
      data = {n: varlen_data(lengths, e, input_size) for n, e in epochs.items()}
      for cell in cells_:
        model = SeqlabModel(cell, shape.hidden)
        buckets_of = {'seqlab padded' if n == 0 else f'seqlab buckets={n}': n for n in epochs}
        impls = [varlen_jax_impl(name, model, data[n]) for name, n in buckets_of.items()]
        if 'flax' in peers and cell in FLAX_CELLS:
          impls.append(varlen_jax_impl('flax seq_lengths', FlaxModel(cell, shape.hidden),
                                       data[0]))
        if 'torch' in peers and torch is not None and cell in TORCH_CELLS:
          impls += [varlen_torch_impl(torch, cell, shape.hidden, data[0], packed)
                    for packed in (True, False)]
        log(f'{source} {cell} {shape}: ' + ', '.join(f'{i.name} {i.compile_s or 0:.1f}s'
                                                     for i in impls))
        measure(impls, steps, rounds)
        valid = int(lengths.sum())
        epoch = lambda name: epochs[buckets_of.get(name, 0)]
        tps = {i.name: valid / statistics.median(i.times) for i in impls}
        new = [{'source': source, 'cell': cell, 'shape': str(shape),
                'longest_over_mean': float(lengths.max() / lengths.mean()), 'impl': i.name,
                'valid_tokens_per_sec': tps[i.name],
                'padding': 0.0 if i.name == 'torch packed' else
                           1 - valid / sum(len(r) * t for r, _, t in epoch(i.name)),
                'batches': len(epoch(i.name)), 'compile_s': i.compile_s,
                'epoch_times_s': i.times,
                'vs_padded': tps[i.name] / tps['seqlab padded'],
                'vs_torch_packed': tps[i.name] / tps['torch packed'] if 'torch packed' in tps
                                   else None} for i in impls]
        rows += new
        log(format_table(new, VARLEN_COLUMNS, header=False))
  return rows


# --- Output ---------------------------------------------------------------------------

def fmt(value, spec):
  return '-' if value is None else format(value, spec)


SPEED_COLUMNS = [('cell', 'cell', 's'), ('shape', 'B x T x H', 's'), ('impl', 'impl', 's'),
                 ('tokens_per_sec', 'tokens/s', ',.0f'), ('compile_s', 'compile s', '.1f'),
                 ('ratio_vs_torch', 'vs torch', '.2f'), ('ratio_vs_flax', 'vs flax', '.2f'),
                 ('matmul_flops_per_sec', 'GFLOP/s', 'gflop'), ('of_dense', 'of dense', '.2f')]
VARLEN_COLUMNS = [('source', 'lengths from', 's'), ('cell', 'cell', 's'),
                  ('shape', 'B x T x H', 's'), ('longest_over_mean', 'longest/mean', '.2f'),
                  ('impl', 'impl', 's'), ('batches', 'batches', 'd'), ('padding', 'padding', '.0%'),
                  ('valid_tokens_per_sec', 'valid tokens/s', ',.0f'),
                  ('compile_s', 'compile s', '.1f'), ('vs_padded', 'vs padded', '.2f'),
                  ('vs_torch_packed', 'vs torch packed', '.2f')]
MEMORY_COLUMNS = [('cell', 'cell', 's'), ('shape', 'B x T x H', 's'), ('remat', 'remat k', 'd'),
                  ('hoist', 'hoist', ''), ('temp_bytes', 'temp MiB', 'mib'),
                  ('peak_bytes', 'peak MiB', 'mib'), ('workspace_bytes', 'matmul scratch MiB', 'mib'),
                  ('temp_bytes_per_step', 'temp KiB/step', 'kib')]
ENGINES_COLUMNS = [('cell', 'cell', 's'), ('shape', 'B x T x H', 's'), ('impl', 'engine', 's'),
                   ('step_s', 'step s', '.4f'), ('vs_sequential', 'speed vs sequential', '.2f'),
                   ('newton_iterations', 'iterations', '.0f'), ('newton_fallbacks', 'fell back', '.0f'),
                   ('compile_s', 'compile s', '.1f')]
CROSSOVER_COLUMNS = [('cell', 'cell', 's'), ('shape', 'B x T x H', 's'), ('impl', 'engine', 's'),
                     ('tokens_per_sec', 'tokens/s', ',.0f'), ('compile_s', 'compile s', '.1f'),
                     ('fastest', 'fastest', '')]


def format_table(rows, columns, header=True) -> str:
  """A markdown table of ``rows`` (dicts) with ``columns`` (key, title, format)."""
  def cell(row, key, spec):
    value = row.get(key)
    if spec == 'mib':
      return f'{value / 2**20:,.1f}'
    if spec == 'kib':
      return f'{value / 2**10:,.1f}'
    if spec == 'gflop':
      return fmt(None if value is None else value / 1e9, '.0f')
    return fmt(value, spec)
  lines = ['| ' + ' | '.join(c[1] for c in columns) + ' |',
           '|' + '---|' * len(columns)] if header else []
  lines += ['| ' + ' | '.join(cell(r, k, s) for k, _, s in columns) + ' |' for r in rows]
  return '\n'.join(lines)


def fmt_load(load) -> str:
  return ' '.join(f'{x:.1f}' for x in load)


def log(message: str) -> None:
  print(message, file=sys.stderr, flush=True)


def flag_or_quick(flag, key):
  return QUICK[key] if _QUICK.value and not flag.present else flag.value


def parse_lengths(values) -> list[int]:
  """--lengths' strings -> positive ints; app.UsageError naming a bad one."""
  lengths = []
  for value in values:
    try:
      lengths.append(int(value))
    except ValueError:
      lengths.append(0)
    if lengths[-1] < 1:
      raise app.UsageError(f'--lengths: {value!r} is not a positive integer; give sequence '
                           'lengths separated by commas, e.g. --lengths 1000,4000')
  if not lengths:
    raise app.UsageError('--lengths is empty; give sequence lengths separated by commas, '
                         'e.g. --lengths 1000,4000')
  return lengths


def parse_buckets(values) -> list[int]:
  """--buckets' strings -> positive ints; app.UsageError naming a bad one."""
  try:
    counts = [int(v) for v in values]
  except ValueError:
    counts = [0]
  if not counts or min(counts) < 1:
    raise app.UsageError(f'--buckets: {",".join(values)!r} is not a list of positive integers; '
                         'give length bucket counts separated by commas, e.g. --buckets 2,4')
  return counts


def check_choices(name, values, choices):
  bad = [v for v in values if v not in choices]
  if bad:
    raise app.UsageError(f'--{name}: unknown {", ".join(bad)}; choose from {", ".join(choices)}')


def main(argv):
  """Runs the tables the flags ask for; a bad flag value is one line on stderr
  (``seqlab: ...``) and exit code 2, before anything is measured."""
  try:
    return _main(argv)
  except app.UsageError as e:
    print(f'seqlab: {e}', file=sys.stderr)
    return 2


def _main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {" ".join(argv[1:])}')
  workdir_lib.quiet_logging()
  check_choices('cells', _CELLS.value, tuple(cells.CELLS))
  check_choices('peers', _PEERS.value, PEERS)
  if _DTYPE.value != 'float32' and (_MEMORY.value or _CROSSOVER.value or _ENGINES.value
                                    or _VARLEN.value):
    raise app.UsageError('--dtype applies to the speed table only; --memory, --crossover, '
                         '--engines and --varlen measure float32: leave --dtype out')
  shapes = flag_or_quick(_SHAPES, 'shapes')
  if not (_SHAPES.present or _QUICK.value) and jax.default_backend() != 'cpu':
    shapes = shapes + ACCELERATOR_SHAPES
  if _CROSSOVER.value and not (_SHAPES.present or _QUICK.value):
    shapes = CROSSOVER_SHAPES
  if _ENGINES.value and not (_SHAPES.present or _QUICK.value):
    shapes = ENGINES_SHAPES
  if _VARLEN.value and not (_SHAPES.present or _QUICK.value):
    shapes = VARLEN_SHAPES
  buckets = parse_buckets(flag_or_quick(_BUCKETS, 'buckets'))
  try:
    shapes = [Shape.parse(s) for s in shapes]
  except ValueError as e:
    raise app.UsageError(str(e)) from None
  input_size = flag_or_quick(_INPUT, 'input')
  steps, rounds = flag_or_quick(_STEPS, 'steps'), flag_or_quick(_ROUNDS, 'rounds')
  if steps < 1 or rounds < 2:
    raise app.UsageError('--steps must be >= 1 and --rounds >= 2 (round 0 is a warm-up)')
  if input_size < 1:
    raise app.UsageError(f'--input must be a positive integer, got {input_size}')
  lengths = parse_lengths(flag_or_quick(_LENGTHS, 'lengths'))
  if _JSON.value:  # now, not after the benchmark has run
    folder = os.path.dirname(os.path.abspath(_JSON.value))
    if os.path.isdir(_JSON.value) or not os.path.isdir(folder) or not os.access(folder, os.W_OK):
      raise app.UsageError(f'--json {_JSON.value}: cannot write a file there (no such '
                           'directory, a directory, or not writable); give another path')
  torch = torch_module() if 'torch' in _PEERS.value else None
  if 'torch' in _PEERS.value and torch is None:
    log('torch is not installed: measuring without it')
  settings = {'cells': _CELLS.value, 'input': input_size, 'steps': steps, 'rounds': rounds,
              'warmup_rounds': 1, 'dtype': _DTYPE.value, 'peers': _PEERS.value,
              'loss': 'linear head [hidden, 1] + MSE, Adam(1e-3)'}
  result = {'machine': machine(torch), 'settings': settings}
  print(f'machine: {result["machine"]["cpu"]}, {result["machine"]["cores"]} cores, '
        f'jax {jax.__version__} on {jax.default_backend()}, flax {flax.__version__}, '
        f'torch {torch.__version__ if torch else "-"} on {torch_device(torch)}\n')
  if result['machine']['accelerator']:
    print(f'accelerator: {result["machine"]["accelerator"]}\n')

  settings['shapes'] = [str(s) for s in shapes]
  if not (_MEMORY.value or _CROSSOVER.value or _ENGINES.value or _VARLEN.value):
    result['speed'] = run_speed(_CELLS.value, shapes, input_size, steps, rounds,
                                _PEERS.value, _DTYPE.value, torch)
    print(f'training step, {_DTYPE.value}, input {input_size}, median of '
          f'{steps * (rounds - 1)} steps over {rounds - 1} interleaved rounds; GFLOP/s counts '
          f'the step\'s matmuls only (bench.step_matmul_flops), "of dense" divides it by a '
          f'{dense_size()}^3 matmul\'s rate measured in the same rounds\n')
    print(format_table(result['speed'], SPEED_COLUMNS))
  if _MEMORY.value:
    batch, hidden = (4, 32) if _QUICK.value else (8, 256)
    settings['lengths'] = lengths
    result['memory'] = run_memory(_CELLS.value, lengths, batch, hidden, input_size)
    print('training step memory (XLA memory_analysis; peak = arguments + outputs - aliased '
          '+ temp)\n')
    print(format_table(result['memory'], MEMORY_COLUMNS))
  if _CROSSOVER.value:
    result['crossover'] = run_crossover(_CELLS.value, shapes, input_size, steps, rounds)
    print(format_table(result['crossover'], CROSSOVER_COLUMNS))
  if _ENGINES.value:
    result['engines'] = run_engines(_CELLS.value, shapes, input_size, steps, rounds)
    print('training step (forward, backward, Adam) per engine; iterations and fallbacks: '
          'the Newton engine\'s on the first step\'s parameters\n')
    print(format_table(result['engines'], ENGINES_COLUMNS))
  if _VARLEN.value:
    settings.update(varlen=_VARLEN.value, buckets=buckets, varlen_batches=VARLEN_BATCHES)
    result['varlen'] = run_varlen(_VARLEN.value, _CELLS.value, shapes, input_size, steps,
                                  rounds, buckets, _PEERS.value, torch)
    print(f'training epoch of {VARLEN_BATCHES} x batch variable-length examples, float32, '
          f'input {input_size}, per-step masked MSE; valid tokens/s = the real tokens / median '
          f'epoch time over {steps * (rounds - 1)} epochs in {rounds - 1} interleaved rounds; '
          'padding = scanned steps that are padding\n')
    print(format_table(result['varlen'], VARLEN_COLUMNS))
  result['machine']['load_average_after'] = os.getloadavg()
  print(f'\nload average (1, 5, 15 min): before {fmt_load(result["machine"]["load_average"])}, '
        f'after {fmt_load(result["machine"]["load_average_after"])} on '
        f'{result["machine"]["cores"]} cores')
  if _JSON.value:
    with open(_JSON.value, 'w') as f:
      json.dump(result, f, indent=1)
  return 0


if __name__ == '__main__':
  cli.run(main, FLAGS)

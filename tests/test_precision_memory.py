"""Rematerialisation (``remat``) and bfloat16: the same numbers, less memory.

Memory is XLA's compiled ``memory_analysis()`` of the training step: a measurement of
the program, not of a run, so it does not depend on the machine's load.
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import load_config
from seqlab import bench
from seqlab import cells
from seqlab.cells import base
from seqlab import layers
from seqlab import models
from seqlab import tasks
from seqlab import scan
from seqlab import train

LENGTHS = jnp.array([23, 5, 17], jnp.int32)  # batch 3, time 23
ENGINE_CASES = [('lstm', 'sequential'), ('gru', 'sequential'), ('gru_reset_before', 'sequential'),
                ('rnn', 'sequential'), ('mingru', 'sequential'), ('mingru', 'associative'),
                ('lru', 'associative')]


@pytest.fixture
def strict_numpy():
  """Strict dtype promotion for our code alone (optax's Adam is not strict-clean)."""
  with jax.numpy_dtype_promotion('strict'):
    yield


def assert_trees_close(a, b, rtol=1e-5, atol=1e-5):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=rtol, atol=atol), a, b)


def run_loss(cell, engine, remat, reverse, lengths, params, xs):
  """A scalar of every output and the final carry, so both get cotangents."""
  carry, ys = scan.run(cell, params, xs, lengths=lengths, reverse=reverse, engine=engine,
                       remat=remat)
  carry_term = sum(jnp.sum(jnp.real(c) ** 3) for c in jax.tree.leaves(carry))
  return jnp.sum(jnp.sin(ys)) + carry_term, (carry, ys)


# ----------------------------------------------------------------------------- remat

def assert_remat_equals_plain(name, engine, reverse, remat):
  """Outputs, final carry and gradients (params and inputs) as with remat=0."""
  cell = cells.make_cell(name, 8)
  params = cell.init(jax.random.key(0), 3)
  xs = jax.random.normal(jax.random.key(1), (3, 23, 3))
  grad = jax.jit(jax.grad(run_loss, argnums=(5, 6), has_aux=True), static_argnums=(0, 1, 2, 3))
  (want_grads, want_out) = grad(cell, engine, 0, reverse, LENGTHS, params, xs)
  (got_grads, got_out) = grad(cell, engine, remat, reverse, LENGTHS, params, xs)
  assert_trees_close(got_out, want_out)
  assert_trees_close(got_grads, want_grads, rtol=1e-4)


@pytest.mark.usefixtures('strict_numpy')
@pytest.mark.parametrize('reverse', [False, True])
@pytest.mark.parametrize('name, engine', ENGINE_CASES)
def test_remat_equals_plain_scan(name, engine, reverse):
  assert_remat_equals_plain(name, engine, reverse, remat=5)  # 23 steps: 4 chunks + 2 padding


@pytest.mark.usefixtures('strict_numpy')
@pytest.mark.parametrize('remat', [1, 23, 50])  # every step a chunk, one chunk, k > T
def test_remat_chunk_lengths(remat):
  assert_remat_equals_plain('lstm', 'sequential', True, remat)


@pytest.mark.usefixtures('strict_numpy')
def test_remat_without_lengths_pads_and_cuts():
  cell = cells.make_cell('lstm', 4)
  params = cell.init(jax.random.key(0), 2)
  xs = jax.random.normal(jax.random.key(1), (2, 7, 2))
  want = scan.run(cell, params, xs)
  got = scan.run(cell, params, xs, remat=3)  # 7 steps: chunks 3, 3, 1 + 2 padding
  assert got[1].shape == (2, 7, 4)
  assert_trees_close(got, want)


@pytest.mark.usefixtures('strict_numpy')
@pytest.mark.parametrize('name', ['lstm', 'gru'])
def test_bidirectional_stack_remat_equals_plain(name):
  """A two-layer bidirectional StackedRNN: outputs, carries and parameter gradients."""
  xs = jax.random.normal(jax.random.key(1), (3, 23, 3))
  make = lambda remat: layers.StackedRNN(name, 6, num_layers=2, bidirectional=True,
                                        scan=scan.ScanOptions(remat=remat))
  variables = make(0).init(jax.random.key(0), xs, LENGTHS)

  def loss(variables, remat):
    ys, carries = make(remat).apply(variables, xs, LENGTHS)
    return jnp.sum(jnp.sin(ys)), (ys, carries)
  grad = jax.jit(jax.grad(loss, has_aux=True), static_argnums=1)
  want_grads, want_out = grad(variables, 0)
  got_grads, got_out = grad(variables, 4)
  assert_trees_close(got_out, want_out)
  assert_trees_close(got_grads, want_grads, rtol=1e-4)


@pytest.mark.parametrize('remat', [-1, 2.5, True, '4'])
def test_bad_remat_is_named(remat):
  with pytest.raises(ValueError, match='remat must be a non-negative integer'):
    scan.ScanOptions(remat=remat)


@pytest.mark.parametrize('hoist', [True, False])
@pytest.mark.parametrize('name', ['lstm', 'gru'])
def test_remat_temp_memory_is_well_below_plain(name, hoist):
  """T = 2000: the plain scan keeps every step's gates for the backward pass; remat
  (k = 45 ~ sqrt T) keeps 45 chunk carries and one chunk's residuals. What stays
  O(T) is the layer's input, output and output gradient, which remat cannot drop. The
  fixed matmul scratch (32 MiB on a Hopper GPU, 0 on CPU) is left out of both."""
  shape = bench.Shape(4, 2000, 64)
  stats = {k: bench.memory_stats(bench.CellModel(cells.make_cell(name, 64), hoist, k), shape, 16)
           for k in (0, 45)}
  temp = {k: s['temp_bytes'] - s['workspace_bytes'] for k, s in stats.items()}
  assert temp[45] < 0.5 * temp[0], temp


def remat_bound_bytes(time, k, batch, hidden, inputs):
  """A float32 upper bound on the temp memory of an LSTM training step under remat=k.

  ``time / k`` chunk-boundary carries (c, h): 2 B H each; one chunk's residuals, at
  most 16 B H per step for k steps (the plain scan keeps ~12 B H per step: four gates,
  their activations, c, tanh c, h); and the inputs in up to 4 copies (time-major,
  padded, chunked): 4 T B I. The head pools the last step, so there is no [T, H] output.
  """
  words = (-(-time // k)) * 2 * batch * hidden + k * 16 * batch * hidden + 4 * time * batch * inputs
  return 4 * words


def test_ten_thousand_steps_train_in_bounded_memory():
  """One training step of the adding task at T = 10,000 (LSTM 32, batch 2) with remat=100:
  the same loss and gradient norm as without remat, and temp memory under the bound,
  which the plain scan's (~12 B H floats per step, 30 MB here) is far above. Both leave
  out the fixed matmul scratch (32 MiB on a Hopper GPU, 0 on CPU)."""
  config = load_config('adding')
  config.task.length, config.model.hidden_size, config.train.batch_size = 10_000, 32, 2

  def one_step(remat):
    config.model.remat = remat
    task, model, optimizer = train.build(config)
    batch = task.batch('train', 0, 2)
    state = train.create_state(model, optimizer, batch, config.seed)
    step = jax.jit(functools.partial(train.train_step, model=model, optimizer=optimizer,
                                     spec=task.spec))
    compiled = step.lower(state, batch).compile()
    new_state, metrics = compiled(state, batch)
    temp = compiled.memory_analysis().temp_size_in_bytes - bench.dot_workspace_bytes(2, 32)
    return temp, new_state, metrics

  temp, state, metrics = one_step(100)
  plain_temp, _, plain_metrics = one_step(0)
  bound = remat_bound_bytes(10_000, 100, batch=2, hidden=32, inputs=2)
  assert temp < bound < plain_temp, (temp, bound, plain_temp)
  assert int(state['bad_step']) == 0 and np.isfinite(metrics['loss'])
  np.testing.assert_allclose(metrics['loss'], plain_metrics['loss'], rtol=1e-5)
  np.testing.assert_allclose(metrics['grad_norm'], plain_metrics['grad_norm'], rtol=1e-4)


# ----------------------------------------------------------------------------- bfloat16

def adding_curve(cell: str, dtype: str, steps=200, log_every=20):
  """Trains the adding task (T = 20, hidden 32, lr 1e-2) for ``steps`` steps.

  Returns (the loss of every ``log_every``-th step, window means of the loss over
  each ``log_every`` steps, the final state, the compiled step's HLO text, the carries).
  """
  config = load_config('adding')
  config.model.cell, config.model.dtype, config.model.hidden_size = cell, dtype, 32
  config.task.length, config.optim.lr, config.train.steps = 20, 1e-2, steps
  task, model, optimizer = train.build(config)
  batch_size = config.train.batch_size
  batch = task.batch('train', 0, batch_size)
  state = train.create_state(model, optimizer, batch, config.seed)
  step = jax.jit(functools.partial(train.train_step, model=model, optimizer=optimizer,
                                   spec=task.spec))
  hlo = step.lower(state, batch).as_text()
  losses = []
  for i in range(steps):
    state, metrics = step(state, task.batch('train', i, batch_size))
    losses.append(float(metrics['loss']))
  losses = np.array(losses)
  _, carries = train.apply_model(model, state['params'], batch)
  return losses[::log_every], losses.reshape(-1, log_every).mean(1), state, hlo, carries


@pytest.mark.parametrize('cell', ['lstm', 'gru'])
def test_bfloat16_training_follows_float32(cell):
  """The same run in float32 and with bfloat16 matmuls: every logged loss within 10%,
  the window means within 5% (or 2% of the first); parameters, Adam moments and carries stay float32, and
  the step really multiplies in bfloat16. (In 200 steps the GRU solves the task, loss
  0.26 -> ~0.01, the LSTM gets from 0.22 to ~0.15: both curves move.)"""
  f32_logged, f32_means, _, f32_hlo, _ = adding_curve(cell, 'float32')
  logged, means, state, hlo, carries = adding_curve(cell, 'bfloat16')
  assert 'bf16' in hlo and 'bf16' not in f32_hlo
  assert not np.array_equal(logged, f32_logged)  # bfloat16 did change the numbers
  # 10%, or 0.25% of the starting loss: one batch's loss near zero (the GRU's ~0.02 at
  # step 180) moves by up to 5% with the CPU's bfloat16 dot (1% with XLA held to AVX2).
  np.testing.assert_allclose(logged, f32_logged, rtol=0.10, atol=0.0025 * f32_logged[0])
  # 5% relative, or 2% of the starting loss once the loss is near zero (GRU: 0.008).
  np.testing.assert_allclose(means, f32_means, rtol=0.05, atol=0.02 * f32_means[0])
  assert means[-1] < 0.8 * means[0]
  for tree in (state['params'], state['opt_state'], carries):
    dtypes = {x.dtype for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.floating)}
    assert dtypes == {jnp.dtype(jnp.float32)}, dtypes


# ----------------------------------------------------------------------------- scan.fused

def set_span_steps(monkeypatch, steps: int):
  """``scan.fused`` cuts time into spans of about ``steps`` steps on this backend."""
  monkeypatch.setattr(scan, 'CHUNK_BACKENDS', (jax.default_backend(),))
  monkeypatch.setattr(scan, 'CHUNK_STEPS_CPU', steps)


def set_in_place(monkeypatch, in_place: bool):
  """Whether ``scan.fused``'s backward overwrites the saved preactivations on this
  backend: True is the CPU's default, False the GPU's (``scan.IN_PLACE_BACKENDS``)."""
  monkeypatch.setattr(scan, 'IN_PLACE_BACKENDS', (jax.default_backend(),) if in_place else ())


@pytest.mark.usefixtures('strict_numpy')
@pytest.mark.parametrize('hoist', [False, True])
@pytest.mark.parametrize('reverse', [False, True])
@pytest.mark.parametrize('name, in_place, span_steps', [
    ('lstm', True, None), ('rnn', True, None), ('irnn', True, None), ('gru', True, None),
    ('lstm', False, None), ('rnn', False, None), ('lstm', True, 7), ('gru', True, 7),
    ('rnn', False, 7)])
def test_fused_gradient_equals_autodiff(name, in_place, span_steps, reverse, hoist, monkeypatch):
  """``scan.fused`` (its own VJP: weights' gradients after the loop) against autodiff of
  the plain scan: outputs, final carry and gradients of every parameter, the inputs
  and the initial carry, with padded sequences and a non-zero initial carry. Also
  with the gradient stack started from zeros, as on a GPU (``in_place`` False), and
  with the 23 steps cut into spans of 7, 8 and 8 steps (``scan.chunk_spans``), each
  with its own loops: 3 forward and 3 backward."""
  set_in_place(monkeypatch, in_place)
  if span_steps:
    set_span_steps(monkeypatch, span_steps)
  else:
    monkeypatch.setattr(scan, 'CHUNK_BACKENDS', ())
  cell = cells.make_cell(name, 8)
  params = cell.init(jax.random.key(0), 3)
  # Non-zero biases, so that the GRU's recurrent bias is exercised.
  params = jax.tree.map(lambda p: p + 0.1 * jax.random.normal(jax.random.key(2), p.shape), params)
  xs = jax.random.normal(jax.random.key(1), (3, 23, 3))
  carry0 = jax.tree.map(lambda c: c + 0.5, cell.initial_carry((3,)))

  def loss(params, xs, carry0, fuse):
    carry, ys = scan.run(cell, params, xs, lengths=LENGTHS, initial_carry=carry0,
                         reverse=reverse, hoist=hoist and fuse, engine='sequential', fuse=fuse)
    return jnp.sum(jnp.sin(ys)) + sum(jnp.sum(c ** 3) for c in jax.tree.leaves(carry)), ys
  grad = jax.jit(jax.grad(loss, argnums=(0, 1, 2), has_aux=True), static_argnums=3)
  want_grads, want_ys = grad(params, xs, carry0, False)
  got_grads, got_ys = grad(params, xs, carry0, True)
  assert_trees_close(got_ys, want_ys)
  assert_trees_close(got_grads, want_grads, rtol=1e-4, atol=1e-4)
  assert float(jnp.max(jnp.abs(got_grads[0]['recurrent_kernel']))) > 0
  assert 'custom_vjp' in str(jax.make_jaxpr(loss, static_argnums=3)(params, xs, carry0, True))
  jaxpr = jax.make_jaxpr(jax.grad(loss, has_aux=True), static_argnums=3)(params, xs, carry0, True)
  assert len(scan_eqns(jaxpr.jaxpr)) == (6 if span_steps else 2)


@pytest.mark.parametrize('backend', ['cpu', 'gpu', 'tpu'])
@pytest.mark.parametrize('time, on_cpu', [(1, 1), (31, 1), (32, 1), (64, 2), (100, 3),
                                          (255, 7), (256, 8), (10_000, 8)])
def test_chunk_spans_cover_time_in_order(monkeypatch, backend, time, on_cpu):
  """Spans of about 32 steps (``CHUNK_STEPS_CPU``), at most 8 (``MAX_CHUNKS_CPU``), on
  CPU; one elsewhere. Together they cover [0, time) in order, none empty."""
  monkeypatch.setattr(jax, 'default_backend', lambda: backend)
  spans = scan.chunk_spans(time)
  assert spans[0][0] == 0 and spans[-1][1] == time
  assert all(a < b for a, b in spans) and all(b == c for (_, b), (c, _) in zip(spans, spans[1:]))
  assert len(spans) == (on_cpu if backend == 'cpu' else 1)


@pytest.mark.usefixtures('strict_numpy')
@pytest.mark.parametrize('unroll', [5, 16])
@pytest.mark.parametrize('name', ['lstm', 'gru'])
def test_unrolled_fused_equals_rolled(name, unroll):
  """Unrolling (the GPU default is 16; 5 does not divide the 23 steps) changes neither
  ``scan.fused``'s outputs nor its gradients, with padding and a reversed read."""
  cell = cells.make_cell(name, 8)
  params = cell.init(jax.random.key(0), 3)
  xs = jax.random.normal(jax.random.key(1), (3, 23, 3))

  def loss(params, xs, unroll):
    _, ys = scan.run(cell, params, xs, lengths=LENGTHS, reverse=True, hoist=True,
                     engine='sequential', fuse=True, unroll=unroll)
    return jnp.sum(jnp.sin(ys)), ys
  grad = jax.jit(jax.grad(loss, argnums=(0, 1), has_aux=True), static_argnums=2)
  want_grads, want_ys = grad(params, xs, 1)
  got_grads, got_ys = grad(params, xs, unroll)
  assert_trees_close(got_ys, want_ys)
  assert_trees_close(got_grads, want_grads, rtol=1e-4, atol=1e-5)


@pytest.mark.usefixtures('strict_numpy')
@pytest.mark.parametrize('name', ['gru', 'lstm', 'irnn'])
def test_gates_bwd_is_the_vjp_of_gates(name):
  """What ``scan.fused`` runs for a step's gate arithmetic (``scan.gates_fwd`` saves,
  ``scan.gates_bwd`` applies: the GRU's hand-written backward, JAX's VJP for the
  others) equals JAX's VJP of the cell's ``gates``, at random carries,
  preactivations and cotangents."""
  cell = cells.make_cell(name, 6)
  keys = iter(jax.random.split(jax.random.key(3), 8))
  normal = lambda like: jax.tree.map(lambda a: 1.5 * jax.random.normal(next(keys), a.shape), like)
  carry = normal(cell.initial_carry((5,)))
  params = cell.init(jax.random.key(0), 2)
  pre = normal(base.preactivations(cell, params, carry, cell.project(params, jnp.zeros((5, 2)))))
  (new, y), want_vjp = jax.vjp(cell.gates, carry, pre)
  dnew, dy = normal(new), normal(y)
  out, res = scan.gates_fwd(cell, carry, pre)
  assert_trees_close(out, (new, y))
  got = scan.gates_bwd(cell, carry, res, dnew, dy)
  assert_trees_close(got, want_vjp((dnew, dy)), rtol=1e-5, atol=1e-6)
  if name == 'gru':  # it saves [r, z, n] and ph_n: 4H per step, not (px, ph)'s 6H
    assert sum(a.shape[-1] for a in jax.tree.leaves(res)) == 4 * 6


def scan_eqns(jaxpr):
  """The ``scan`` equations of ``jaxpr`` (a Jaxpr) in program order, looking inside
  nested calls but not inside the scans."""
  found = []
  for eqn in jaxpr.eqns:
    if eqn.primitive.name == 'scan':
      found.append(eqn)
      continue
    for value in eqn.params.values():
      inner = getattr(value, 'jaxpr', value)  # a ClosedJaxpr's Jaxpr, or a Jaxpr
      if hasattr(inner, 'eqns'):
        found += scan_eqns(inner)
  return found


def scan_split(eqn):
  """(consts, carries): how many of a ``scan`` equation's inputs are each (jax 0.11
  replaced the params ``num_consts`` and ``num_carry`` by ``ft_in``, a flat tree of
  three groups, consts, carry and xs, with one leaf per input)."""
  if 'num_consts' in eqn.params:
    return eqn.params['num_consts'], eqn.params['num_carry']
  consts, carry, _ = eqn.params['ft_in'].unpack()
  return len(consts), len(carry)


def scan_dots(jaxpr):
  """The number of dot_generals in the body of each ``scan`` in ``jaxpr`` (a Jaxpr),
  in program order, looking inside nested calls."""
  return [sum(e.primitive.name == 'dot_general' for e in eqn.params['jaxpr'].jaxpr.eqns)
          for eqn in scan_eqns(jaxpr)]


@pytest.mark.parametrize('name', ['lstm', 'gru'])
def test_fused_backward_loop_holds_one_matmul(name):
  """The point of ``scan.fused``: its backward loop runs one matmul per step (dh = dph
  U^T), where autodiff of the plain scan runs dh, dU, dW and dx there."""
  cell = cells.make_cell(name, 8)
  params = cell.init(jax.random.key(0), 3)
  xs = jnp.ones((2, 5, 3))

  def loss(params, xs, fuse):
    return jnp.sum(scan.run(cell, params, xs, hoist=False, fuse=fuse)[1] ** 2)
  grad = jax.grad(loss, argnums=(0, 1))
  dots = lambda fuse: scan_dots(jax.make_jaxpr(grad, static_argnums=2)(params, xs, fuse).jaxpr)
  assert dots(True) == [2, 1]  # forward: x W and h U; backward: dph U^T
  assert dots(False)[0] == 2 and dots(False)[1] >= 4


@pytest.mark.usefixtures('cpu_backend')
@pytest.mark.parametrize('in_place', [True, False])
@pytest.mark.parametrize('name', ['lstm', 'rnn', 'gru'])
def test_fused_backward_overwrites_the_saved_preactivations(name, in_place, monkeypatch):
  """On CPU ``scan.fused``'s backward loop carries the forward's stack of
  preactivations and writes each step's gradient over the step it has just read,
  instead of reading the stack as scan input and building a second one as scan
  output: one fewer [time, batch, proj] buffer to zero-fill (BUILD_NOTES 3.9). The
  GRU saves its gate activations, not the preactivations: it keeps two fresh stacks.
  Off ``scan.IN_PLACE_BACKENDS`` (GPUs) every cell starts from fresh stacks."""
  set_in_place(monkeypatch, in_place)
  time, batch = 5, 2
  cell = cells.make_cell(name, 8)
  params = cell.init(jax.random.key(0), 3)
  stack = (time, batch, params['recurrent_kernel'].shape[1])
  xs = jnp.ones((batch, time, 3))
  loss = lambda p: jnp.sum(scan.run(cell, p, xs, hoist=False, fuse=True)[1] ** 2)
  forward, backward = scan_eqns(jax.make_jaxpr(jax.grad(loss))(params).jaxpr)
  consts, num_carry = scan_split(backward)
  carry = backward.invars[consts:consts + num_carry]
  stacks = [v for v in carry if v.aval.shape == stack]
  from_forward = [v for v in stacks if v in forward.outvars]
  if name == 'gru':  # d px and d ph
    assert len(stacks) == 2 and not from_forward
  else:
    assert len(stacks) == 1 and bool(from_forward) == in_place
  assert not any(v.aval.shape == stack for v in backward.outvars[num_carry:])


def stack_copies(hlo: str, shape):
  """{computation name: [copy instructions]} of f32 buffers of ``shape`` in compiled HLO
  text; 'ENTRY' is the top level, run once, every other name a loop body or callee."""
  found, where, text = {}, None, 'f32[%s]' % ','.join(map(str, shape))
  for line in hlo.splitlines():
    if line.startswith('ENTRY'):
      where = 'ENTRY'
    elif line.startswith('%') and line.rstrip().endswith('{'):
      where = line.split()[0]
    elif text in line and ' copy(' in line:
      found.setdefault(where, []).append(line.strip())
  return found


@pytest.mark.usefixtures('cpu_backend')
@pytest.mark.parametrize('name, padded, unroll, hoist, spans', [
    ('lstm', False, 1, False, 1), ('lstm', True, 1, False, 1), ('lstm', False, 4, True, 1),
    ('lstm', False, 5, False, 1), ('rnn', True, 1, False, 1), ('gru', False, 1, False, 1),
    ('gru', True, 4, False, 1), ('lstm', True, 1, False, 2), ('gru', False, 1, False, 2)])
def test_fused_backward_does_not_copy_a_stack_per_step(name, padded, unroll, hoist, spans,
                                                        monkeypatch):
  """Overwriting in place pays only if XLA need not copy the stack to do it: no copy of
  a [time, batch, proj] buffer inside any loop of the compiled training gradient (an
  overwrite of part of the GRU's residuals made XLA copy the whole stack every step,
  17x slower at 8x1024x256), and for the LSTM at unroll 1 none at all (the plain
  scan's output stack was a copy of a zero-filled one; the RNN's stack has the
  shape of its carries' and outputs', which the forward loop zero-fills). The same
  for each span's stack when time is cut into spans (``scan.chunk_spans``), where XLA
  may fill one span's zero stack by copying another's, once, outside the loops."""
  time, batch = 8, 3
  monkeypatch.setattr(scan, 'CHUNK_STEPS_CPU', time // spans)
  assert len(scan.chunk_spans(time)) == spans
  cell = cells.make_cell(name, 8)
  params = cell.init(jax.random.key(0), 3)
  lengths = jnp.array([8, 2, 5]) if padded else None
  def loss(p):
    ys = scan.run(cell, p, jnp.ones((batch, time, 3)), lengths=lengths, hoist=hoist,
                  unroll=unroll, fuse=True)[1]
    return jnp.sum(ys ** 2)
  hlo = jax.jit(jax.grad(loss)).lower(params).compile().as_text()
  copies = stack_copies(hlo, (time // spans, batch, params['recurrent_kernel'].shape[1]))
  assert set(copies) <= {'ENTRY'}, copies
  if name == 'lstm' and unroll == 1 and spans == 1:
    assert not copies, copies


def test_fused_is_the_default_on_cpu():
  """On CPU and GPU an LSTM runs ``scan.fused`` (a custom VJP) unless ``fuse=False``;
  the paper-convention GRU cannot fuse, and asking for it says so."""
  cell = cells.make_cell('lstm', 4)
  params = cell.init(jax.random.key(0), 2)
  loss = lambda p, fuse: jnp.sum(scan.run(cell, p, jnp.ones((2, 5, 2)), fuse=fuse)[1])
  jaxpr = lambda fuse: str(jax.make_jaxpr(loss, static_argnums=1)(params, fuse))
  assert ('custom_vjp' in jaxpr(None)) == (jax.default_backend() in ('cpu', 'gpu'))
  assert 'custom_vjp' not in jaxpr(False) and 'custom_vjp' in jaxpr(True)
  before = cells.make_cell('gru_reset_before', 4)
  assert not scan.default_fuse(before)
  with pytest.raises(ValueError, match='fuse=True needs a cell built from combine'):
    scan.run(before, before.init(jax.random.key(0), 2), jnp.ones((2, 5, 2)), fuse=True)
  with pytest.raises(ValueError, match='fuse=True'):
    layers.StackedRNN('mingru', 4, scan=scan.ScanOptions(fuse=True))


def test_default_unroll_and_bad_unroll():
  """``lax.scan``'s unroll defaults to ``scan.UNROLL_GPU`` on GPUs and 1 elsewhere (as
  measured, BUILD_NOTES.md): ``run``'s default traces the backend's choice, the config's
  0 means that default, and a bad value is named before anything is traced."""
  cell = cells.make_cell('lstm', 4)
  params = cell.init(jax.random.key(0), 2)
  expect = scan.UNROLL_GPU if jax.default_backend() == 'gpu' else 1
  assert scan.default_unroll() == expect
  trace = lambda unroll, fuse: str(jax.make_jaxpr(lambda p: scan.run(
      cell, p, jnp.ones((2, 40, 2)), unroll=unroll, fuse=fuse))(params))
  for fuse in (False, True):
    assert trace(None, fuse) == trace(expect, fuse) != trace(expect + 3, fuse)
  for bad in (0, -2, 2.5, True):
    with pytest.raises(ValueError, match='unroll must be a positive integer'):
      scan.run(cell, params, jnp.ones((2, 5, 2)), unroll=bad)
    with pytest.raises(ValueError, match='unroll must be a positive integer'):
      scan.ScanOptions(unroll=bad)
  config = load_config('adding')
  assert config.model.unroll == 0
  spec = tasks.make_task(config.task, 0).spec
  assert models.build_model(config.model, spec).encoder.scan.unroll is None


@pytest.mark.parametrize('name', ['lstm', 'gru', 'gru_reset_before', 'rnn', 'mingru'])
@pytest.mark.parametrize('batch', [4, 32])
def test_default_hoist_on_cpu(name, batch):
  """Hoisting is measured not to pay on CPU (BUILD_NOTES.md), for any cell and batch
  size: ``scan.run``'s default traces the same program as the backend's choice."""
  cell = cells.make_cell(name, 4)
  params = cell.init(jax.random.key(0), 2)
  hoist = jax.default_backend() != 'cpu'
  assert scan.default_hoist() == hoist
  trace = lambda hoist: str(jax.make_jaxpr(lambda p: scan.run(
      cell, p, jnp.ones((batch, 5, 2)), hoist=hoist, engine='sequential'))(params))
  assert trace(None) == trace(hoist) != trace(not hoist)

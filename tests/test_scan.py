"""seqlab.scan: its options (``ScanOptions``, ``Engine``), the engine choice, remat, the
fused backward and the per-backend defaults, against the plain scan and autodiff."""
import dataclasses

import jax
import jax.numpy as jnp
import ml_collections
import pytest

from conftest import assert_trees_close, load_config
from seqlab import cells
from seqlab.cells import base
from seqlab import layers
from seqlab import models
from seqlab import scan
from seqlab import tasks

LENGTHS = jnp.array([23, 5, 17], jnp.int32)  # batch 3, time 23
ENGINE_CASES = [('lstm', 'sequential'), ('gru', 'sequential'), ('gru_reset_before', 'sequential'),
                ('rnn', 'sequential'), ('mingru', 'sequential'), ('mingru', 'associative'),
                ('lru', 'associative')]


# ----------------------------------------------------------------------------- options

def test_every_engine_member_is_a_choice_by_its_value():
  """The error lists ``Engine``'s members, so a new member is listed without more edits."""
  with pytest.raises(ValueError) as info:
    scan.ScanOptions(engine='parallel')
  assert str(info.value) == ("engine='parallel' is not valid; choose one of: "
                             + ', '.join(e.value for e in scan.Engine))
  for engine in scan.Engine:
    assert scan.ScanOptions(engine=engine.value).engine is engine


def test_keyword_options_override_the_options_object():
  """``run(..., options, **overrides)`` equals ``run`` with the replaced options; the
  overrides are checked as the fields are."""
  cell = cells.make_cell('mingru', 4)
  params = cell.init(jax.random.key(0), 3)
  xs = jax.random.normal(jax.random.key(1), (2, 6, 3))
  options = scan.ScanOptions(engine='associative', remat=0)
  trace = lambda **kw: str(jax.make_jaxpr(lambda p: scan.run(cell, p, xs, **kw))(params))
  assert trace(options=options, remat=2) == trace(options=dataclasses.replace(options, remat=2))
  assert trace(options=options, engine='sequential') == trace(
      options=scan.ScanOptions(engine=scan.Engine.SEQUENTIAL))
  with pytest.raises(ValueError, match='remat must be a non-negative integer'):
    scan.run(cell, params, xs, options=options, remat=-1)
  with pytest.raises(TypeError, match='nope'):
    scan.run(cell, params, xs, nope=1)


NEWTON_DEFAULTS = dict(newton_jacobian='diagonal', newton_tol=1e-5, newton_max_iters=32,
                       newton_guess='zeros', newton_adjoint='sequential', newton_damping=0.0)


@pytest.mark.parametrize('values, expected', [
    (dict(hoist='auto', unroll=0, dtype='float32', engine='auto', remat=0), scan.ScanOptions()),
    (dict(hoist='auto', unroll=0, dtype='float32', engine='newton', remat=0,
          newton_jacobian='dense', newton_tol=1e-4, newton_max_iters=9, newton_guess='carry',
          newton_adjoint='associative', newton_damping=0.5),
     scan.ScanOptions(engine=scan.Engine.NEWTON, newton_jacobian='dense', newton_tol=1e-4,
                      newton_max_iters=9, newton_guess='carry', newton_adjoint='associative',
                      newton_damping=0.5)),
    (dict(hoist='on', unroll=4, dtype='bfloat16', engine='associative', remat=9),
     scan.ScanOptions(hoist=True, unroll=4, dtype=jnp.bfloat16, engine=scan.Engine.ASSOCIATIVE,
                      remat=9)),
    (dict(hoist='off', unroll=0, dtype='float32', engine='sequential', remat=0),
     scan.ScanOptions(hoist=False, engine=scan.Engine.SEQUENTIAL)),
])
def test_from_config_maps_the_models_keys(values, expected):
  values = NEWTON_DEFAULTS | values
  assert scan.ScanOptions.from_config(ml_collections.ConfigDict(values)) == expected


@pytest.mark.parametrize('key, value, message', [
    ('hoist', 'yes', "model.hoist='yes' is not valid; choose one of: auto, on, off"),
    ('dtype', 'float16', "model.dtype='float16' is not valid; choose one of: float32, bfloat16"),
    ('engine', 'parallel', "model.engine='parallel' is not valid; choose one of: sequential, "
     'associative, newton, auto'),
    ('newton_guess', 'previous', "model.newton_guess='previous' is not valid; choose one of: "
     'zeros, carry'),
    ('unroll', -1, 'model.unroll must be a positive integer'),
    ('remat', 1.5, 'model.remat must be a non-negative integer'),
])
def test_from_config_names_the_config_key(key, value, message):
  values = NEWTON_DEFAULTS | dict(hoist='auto', unroll=0, dtype='float32', engine='auto', remat=0)
  values[key] = value
  with pytest.raises(ValueError) as info:
    scan.ScanOptions.from_config(ml_collections.ConfigDict(values))
  assert str(info.value).startswith(message)


def test_options_are_hashable_and_checked_against_the_cell():
  """Frozen and hashable (a static jit argument, a flax field); what depends on the
  cell is checked by ``check`` (and so by ``run`` and ``StackedRNN``), not at construction."""
  options = scan.ScanOptions(engine='associative', fuse=True)
  assert hash(options) == hash(scan.ScanOptions(engine=scan.Engine.ASSOCIATIVE, fuse=True))
  with pytest.raises(dataclasses.FrozenInstanceError):
    options.remat = 3
  with pytest.raises(ValueError, match="engine='associative' needs a diagonal linear recurrence"):
    options.check(cells.make_cell('lstm', 4))
  with pytest.raises(ValueError, match='fuse=True needs a cell built from combine'):
    options.check(cells.make_cell('mingru', 4))


def test_associative_on_lstm_names_the_choices():
  cell = cells.make_cell('lstm', 8)
  params = {'kernel': jnp.zeros((5, 4 * 8))}  # refused before any step runs
  with pytest.raises(ValueError, match="associative.*LSTM.*choose one of: 'sequential', 'newton', 'auto'"):
    scan.run(cell, params, jnp.zeros((3, 12, 5)), engine='associative')
  with pytest.raises(ValueError, match='choose one of'):
    layers.StackedRNN(cell='lstm', hidden_size=8, scan=scan.ScanOptions(engine='associative'))


def test_unknown_engine_lists_the_choices():
  cell = cells.make_cell('mingru', 8)
  params = cell.init(jax.random.key(0), 5)
  with pytest.raises(ValueError, match='choose one of: sequential, associative, newton, auto'):
    scan.run(cell, params, jnp.zeros((3, 12, 5)), engine='parallel')


@pytest.mark.parametrize('name, batch, expect_on_cpu', [
    ('lstm', 1, 'sequential'),
    ('mingru', 1, 'associative'),
    ('mingru', 1024, 'sequential'),
    ('lru', 1024, 'sequential'),
])
def test_auto_engine(name, batch, expect_on_cpu):
  cell = cells.make_cell(name, 8)
  width = scan.state_width(cell.initial_carry((batch,)))
  expected = expect_on_cpu
  if jax.default_backend() != 'cpu' and name != 'lstm':
    expected = 'associative'
  assert scan.choose_engine(cell, scan.Engine.AUTO, width) == scan.Engine(expected)


def test_lru_state_width_counts_complex_twice():
  assert scan.state_width(cells.make_cell('lru', 4, state_size=6).initial_carry((3,))) == 36


# ----------------------------------------------------------------------------- remat

def run_loss(cell, engine, remat, reverse, lengths, params, xs):
  """A scalar of every output and the final carry, so both get cotangents."""
  carry, ys = scan.run(cell, params, xs, lengths=lengths, reverse=reverse, engine=engine,
                       remat=remat)
  carry_term = sum(jnp.sum(jnp.real(c) ** 3) for c in jax.tree.leaves(carry))
  return jnp.sum(jnp.sin(ys)) + carry_term, (carry, ys)


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


@pytest.mark.parametrize('reverse', [False, True])
@pytest.mark.parametrize('name, engine', ENGINE_CASES)
def test_remat_equals_plain_scan(name, engine, reverse):
  assert_remat_equals_plain(name, engine, reverse, remat=5)  # 23 steps: 4 chunks + 2 padding


@pytest.mark.parametrize('remat', [1, 23, 50])  # every step a chunk, one chunk, k > T
def test_remat_chunk_lengths(remat):
  assert_remat_equals_plain('lstm', 'sequential', True, remat)


def test_remat_without_lengths_pads_and_cuts():
  cell = cells.make_cell('lstm', 4)
  params = cell.init(jax.random.key(0), 2)
  xs = jax.random.normal(jax.random.key(1), (2, 7, 2))
  want = scan.run(cell, params, xs)
  got = scan.run(cell, params, xs, remat=3)  # 7 steps: chunks 3, 3, 1 + 2 padding
  assert got[1].shape == (2, 7, 4)
  assert_trees_close(got, want)


@pytest.mark.parametrize('remat', [-1, 2.5, True, '4'])
def test_bad_remat_is_named(remat):
  with pytest.raises(ValueError, match='remat must be a non-negative integer'):
    scan.ScanOptions(remat=remat)


# ----------------------------------------------------------------------------- scan.fused

def set_span_steps(monkeypatch, steps: int):
  """``scan.fused`` cuts time into spans of about ``steps`` steps on this backend."""
  monkeypatch.setattr(scan, 'CHUNK_BACKENDS', (jax.default_backend(),))
  monkeypatch.setattr(scan, 'CHUNK_STEPS_CPU', steps)


def set_in_place(monkeypatch, in_place: bool):
  """Whether ``scan.fused``'s backward overwrites the saved preactivations on this
  backend: True is the CPU's default, False the GPU's (``scan.IN_PLACE_BACKENDS``)."""
  monkeypatch.setattr(scan, 'IN_PLACE_BACKENDS', (jax.default_backend(),) if in_place else ())


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
  output: one fewer [time, batch, proj] buffer to zero-fill (BUILD_NOTES.md, "In-place
  backward on the CPU only"). The GRU saves its gate activations, not the
  preactivations: it keeps two fresh stacks.
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


# ----------------------------------------------------------------------------- defaults

def test_default_unroll_and_bad_unroll():
  """``lax.scan``'s unroll defaults to ``scan.UNROLL_GPU`` on GPUs and 1 elsewhere (as
  measured, BUILD_NOTES.md, "Unroll 16 on GPUs, 1 on the CPU"): ``run``'s default
  traces the backend's choice, the config's 0 means that default, and a bad value is
  named before anything is traced."""
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
  """Hoisting is measured not to pay on CPU (BUILD_NOTES.md, "Hoisting off on the CPU,
  on elsewhere"), for any cell and batch size: ``scan.run``'s default traces the same
  program as the backend's choice."""
  cell = cells.make_cell(name, 4)
  params = cell.init(jax.random.key(0), 2)
  hoist = jax.default_backend() != 'cpu'
  assert scan.default_hoist() == hoist
  trace = lambda hoist: str(jax.make_jaxpr(lambda p: scan.run(
      cell, p, jnp.ones((batch, 5, 2)), hoist=hoist, engine='sequential'))(params))
  assert trace(None) == trace(hoist) != trace(not hoist)



"""seqlab.newton: the Newton engine against the sequential one (outputs, final carries,
gradients), its fallback on a chaotic cell, its iteration count on a contractive one,
and its counts reaching the training metrics."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import load_config
from seqlab import cells
from seqlab import layers
from seqlab import newton
from seqlab import scan
from seqlab import train

CELLS = ('rnn', 'irnn', 'lstm', 'gru', 'gru_reset_before')
LENGTHS = jnp.array([48, 9, 30], jnp.int32)  # batch 3, time 48: two sequences padded
FORMS = [dict(newton_jacobian='dense'), dict(newton_jacobian='diagonal', newton_guess='carry')]


def setup(name, hidden=6, features=3, perturb=0.0):
  """A cell, its parameters (at init, or ``perturb``-scaled noise added to every weight
  and bias: larger, less contractive weights, as training leaves them), inputs and a
  random initial carry."""
  cell = cells.make_cell(name, hidden)
  params = cell.init(jax.random.key(0), features)
  noise = jax.tree.map(lambda p, k: perturb * jax.random.normal(k, p.shape),
                       params, dict(zip(params, jax.random.split(jax.random.key(1), len(params)))))
  params = jax.tree.map(jnp.add, params, noise)
  xs = jax.random.normal(jax.random.key(2), (3, int(LENGTHS[0]), features))
  carry = jax.tree.map(lambda c: 0.5 * jax.random.normal(jax.random.key(3), c.shape),
                       cell.initial_carry((3,)))
  return cell, params, xs, carry


def max_diff(a, b):
  """max |a - b| over the leaves, in units of max(1, |b|): float32's spacing grows with
  the values (the perturbed IRNN's reach 1e6)."""
  return max(float(jnp.max(jnp.abs(x - y)) / jnp.maximum(1.0, jnp.max(jnp.abs(y))))
             for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


@pytest.mark.parametrize('name', CELLS)
@pytest.mark.parametrize('perturb, form, reverse', [
    (0.0, dict(newton_jacobian='dense'), False),
    (0.3, dict(newton_jacobian='diagonal', newton_guess='carry'), True)],
    ids=['init-dense', 'perturbed-diagonal-reverse'])
def test_outputs_and_carries_equal_the_sequential_engine(name, perturb, form, reverse):
  """Padded lengths and a random initial carry: max |difference| <= 1e-4, and Newton
  itself got there (no fallback) -- but for the perturbed IRNN, whose relu states grow
  to ~1e6 by T = 48, where float32 cannot meet an absolute tol of 1e-5: it falls back,
  and is still the sequential result (within 1e-4 of its largest value)."""
  cell, params, xs, carry = setup(name, perturb=perturb)
  run = lambda **kw: jax.jit(lambda p, x, c: scan.run(
      cell, p, x, lengths=LENGTHS, initial_carry=c, reverse=reverse, with_stats=True,
      **kw))(params, xs, carry)
  *expected, _ = run(engine='sequential')
  *got, stats = run(engine='newton', **form)
  assert max_diff(got, expected) <= 1e-4
  assert float(stats['newton_fallbacks']) == float(name == 'irnn' and perturb > 0), stats


@pytest.mark.parametrize('name', CELLS)
def test_gradients_equal_the_sequential_engines(name):
  """d loss / d (params, inputs, initial carry) within 1e-3 relative (to the largest
  entry of each), on padded lengths: the sequential adjoint for every cell, the
  associative one for a one-leaf and a two-leaf carry (GRU, LSTM; compiles are the
  cost of this file)."""
  cell, params, xs, carry = setup(name, perturb=0.3)
  weights = jax.random.normal(jax.random.key(4), (3, int(LENGTHS[0]), 6))

  def grads(**kw):
    def loss(p, x, c):
      final, ys = scan.run(cell, p, x, lengths=LENGTHS, initial_carry=c, **kw)
      return jnp.sum(weights * ys) + sum(jnp.sum(leaf ** 2) for leaf in jax.tree.leaves(final))
    return jax.jit(jax.grad(loss, (0, 1, 2)))(params, xs, carry)

  expected = grads(engine='sequential')
  for adjoint in newton.ADJOINTS if name in ('gru', 'lstm') else ('sequential',):
    got = grads(engine='newton', newton_jacobian='diagonal', newton_adjoint=adjoint)
    for g, e in zip(jax.tree.leaves(got), jax.tree.leaves(expected)):
      assert float(jnp.max(jnp.abs(g - e))) <= 1e-3 * float(jnp.max(jnp.abs(e))), adjoint


def test_bidirectional_stacked_layers_equal_the_sequential_engine():
  """``StackedRNN`` (2 bidirectional LSTM layers) with engine='newton': same outputs and
  carries as 'sequential'; each of its 4 scans sows its counts, which ``step_stats``
  turns into the step's mean iterations and fallback count."""
  xs = jax.random.normal(jax.random.key(0), (3, int(LENGTHS[0]), 3))
  make = lambda engine: layers.StackedRNN(
      cell='lstm', hidden_size=5, num_layers=2, bidirectional=True,
      scan=scan.ScanOptions(engine=engine, newton_jacobian='dense'))
  variables = make('sequential').init(jax.random.key(1), xs, LENGTHS)
  expected = make('sequential').apply(variables, xs, LENGTHS)
  got, sown = make('newton').apply(variables, xs, LENGTHS, mutable=[newton.COLLECTION])
  assert max_diff(got, expected) <= 1e-4
  assert len(jax.tree.leaves(sown)) == 8  # 2 layers x 2 directions x 2 counts
  stats = newton.step_stats(sown)
  assert set(stats) == {'newton_iterations', 'newton_fallbacks'}
  assert 1 <= float(stats['newton_iterations']) <= 32 and float(stats['newton_fallbacks']) == 0
  assert newton.step_stats({}) == {}


def test_a_chaotic_cell_falls_back_to_the_sequential_result():
  """A tanh RNN with recurrent weights x 4 (chaotic: nearby trajectories separate) does
  not converge in 6 iterations; the batch is recomputed sequentially, so the result is
  the sequential one all the same."""
  cell, params, xs, carry = setup('rnn')
  params = dict(params, recurrent_kernel=4.0 * params['recurrent_kernel'])
  run = lambda **kw: jax.jit(lambda p: scan.run(cell, p, xs, lengths=LENGTHS, initial_carry=carry,
                                                with_stats=True, **kw))(params)
  *expected, _ = run(engine='sequential')
  *got, stats = run(engine='newton', newton_jacobian='diagonal', newton_max_iters=6)
  assert float(stats['newton_fallbacks']) == 1.0 and float(stats['newton_iterations']) == 6.0
  assert max_diff(got, expected) <= 1e-4  # chaotic: float rounding grows, yet stays small


@pytest.mark.parametrize('form, most', [('dense', 8), ('diagonal', 24)])
def test_iterations_stay_few_on_a_contractive_cell(form, most):
  """A GRU at its initialisation (contractive), T = 48: dense Newton converges in 5
  iterations here and the diagonal form in 13 (quadratic against linear convergence);
  both far below T."""
  cell, params, xs, carry = setup('gru')
  _, _, stats = scan.run(cell, params, xs, lengths=LENGTHS, engine='newton',
                         newton_jacobian=form, with_stats=True)
  assert 2 <= float(stats['newton_iterations']) <= most
  assert float(stats['newton_fallbacks']) == 0.0


@pytest.mark.parametrize('options, message', [
    (dict(engine='newton', newton_jacobian='full'), "newton_jacobian='full' is not valid; choose one of: dense, diagonal"),
    (dict(engine='newton', newton_tol=0.0), 'newton_tol must be a positive number'),
    (dict(engine='newton', newton_max_iters=0), 'newton_max_iters must be a positive integer'),
    (dict(engine='newton', newton_damping=-1.0), 'newton_damping must be a number >= 0'),
    (dict(engine='newton', remat=4), "remat=4 cannot bound its memory; set remat=0"),
])
def test_bad_newton_options_name_the_fix(options, message):
  cell, params, xs, _ = setup('gru')
  with pytest.raises(ValueError, match=message):
    scan.run(cell, params, xs, **options)


def test_newton_refuses_a_linear_cell():
  cell = cells.make_cell('mingru', 4)
  with pytest.raises(ValueError, match="use engine='associative'"):
    scan.ScanOptions(engine='newton').check(cell)


def test_window_metrics_average_iterations_and_sum_fallbacks():
  """The train log row: iterations the mean over the window's steps, fallbacks summed."""
  rows = [dict(loss=1.0, count=2.0, grad_norm=1.0, newton_iterations=4.0, newton_fallbacks=1.0),
          dict(loss=2.0, count=6.0, grad_norm=3.0, newton_iterations=8.0, newton_fallbacks=0.0),
          dict(loss=3.0, count=2.0, grad_norm=2.0, newton_iterations=6.0, newton_fallbacks=1.0)]
  row = train.window_metrics(rows)
  assert row['newton_iterations'] == 6.0 and row['newton_fallbacks'] == 2.0
  assert row['loss'] == pytest.approx((2 + 12 + 6) / 10) and row['grad_norm'] == 2.0


def test_a_training_step_reports_the_counts_and_equals_the_sequential_step():
  """``train.train_step`` on adding:quick (a GRU) with engine='newton': the metrics gain
  'newton_iterations' and 'newton_fallbacks' (the sequential step's have neither); its
  loss and gradient norm equal the sequential step's (the new weights are not compared:
  Adam's first update, lr * sign(g), magnifies the rounding of a tiny g)."""
  steps = {}
  for engine in ('sequential', 'newton'):
    config = load_config('adding')
    config.model.update(cell='gru', hidden_size=6, engine=engine)
    config.task.length = 24
    task, model, optimizer = train.build(config)
    batch = task.batch('train', 0, 4)
    state = train.create_state(model, optimizer, batch, 0)
    steps[engine] = train.train_step(state, batch, model=model, optimizer=optimizer,
                                     spec=task.spec)
  seq_metrics, new_metrics = steps['sequential'][1], steps['newton'][1]
  assert 'newton_iterations' not in seq_metrics
  assert float(new_metrics['newton_iterations']) >= 1 and float(new_metrics['newton_fallbacks']) == 0
  assert abs(float(new_metrics['loss']) - float(seq_metrics['loss'])) <= 1e-5
  assert abs(float(new_metrics['grad_norm']) / float(seq_metrics['grad_norm']) - 1) <= 1e-4


@pytest.mark.parametrize('dense', [False, True], ids=['diagonal', 'dense'])
@pytest.mark.parametrize('damping', [0.5, 4.0])
def test_damped_solve_is_the_least_squares_step(dense, damping):
  """``damped_solve`` against numpy's least squares on the stacked system
  [[A], [sqrt(lambda) I]] x = [[b'], [sqrt(lambda) guess]], A the bidiagonal
  (I on the diagonal, -a_t below it), b' = b with a_0 s0 added at t = 0; T = 200."""
  time, batch, d = 200, 2, 3
  keys = jax.random.split(jax.random.key(5), 4)
  shape = (time, batch, d, d) if dense else (time, batch, d)
  a = (1.1 / d ** 0.5 if dense else 1.1) * jax.random.normal(keys[0], shape)
  b, guess = (jax.random.normal(k, (time, batch, d)) for k in keys[1:3])
  s0 = jax.random.normal(keys[3], (batch, d))
  got = np.asarray(jax.jit(newton.damped_solve, static_argnums=(4, 5))(
      a, b, s0, guess, damping, dense))
  for i in range(batch):
    blocks = np.asarray(a[:, i], np.float64)
    blocks = blocks if dense else np.stack([np.diag(v) for v in blocks])
    system = np.eye(time * d)
    for t in range(1, time):
      system[t * d:(t + 1) * d, (t - 1) * d:t * d] = -blocks[t]
    rhs = np.asarray(b[:, i], np.float64).copy()
    rhs[0] += blocks[0] @ np.asarray(s0[i], np.float64)
    stacked = np.vstack([system, damping ** 0.5 * np.eye(time * d)])
    target = np.concatenate([rhs.ravel(), damping ** 0.5 * np.asarray(guess[:, i]).ravel()])
    expected = np.linalg.lstsq(stacked, target, rcond=None)[0].reshape(time, d)
    np.testing.assert_allclose(got[:, i], expected, atol=1e-4)


@pytest.mark.parametrize('name', ['lstm', 'gru'])
@pytest.mark.parametrize('jacobian', ['dense', 'diagonal'])
def test_damped_newton_equals_the_sequential_engine(name, jacobian):
  """ELK's damped step (lambda = 1) on trained-like (perturbed) parameters with padded
  lengths and reverse: the same fixed point, so the sequential result within 1e-4,
  reached without falling back; more iterations than the undamped step."""
  cell, params, xs, carry = setup(name, perturb=0.3)
  run = lambda **kw: jax.jit(lambda p, x, c: scan.run(
      cell, p, x, lengths=LENGTHS, initial_carry=c, reverse=True, with_stats=True,
      newton_max_iters=128, **kw))(params, xs, carry)
  *expected, _ = run(engine='sequential')
  *plain, plain_stats = run(engine='newton', newton_jacobian=jacobian)
  *got, stats = run(engine='newton', newton_jacobian=jacobian, newton_damping=1.0)
  assert max_diff(got, expected) <= 1e-4
  assert float(stats['newton_fallbacks']) == 0.0, stats
  assert float(stats['newton_iterations']) > float(plain_stats['newton_iterations'])

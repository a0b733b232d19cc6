"""The task interface: a ``Spec`` of shapes and metrics, and deterministic batches.

A task turns ``(seed, split, step, batch_size)`` into a batch of NumPy arrays, as a
pure function: the generator is ``np.random.default_rng([seed, split_id, step])``.
Restoring the step of a checkpoint therefore restores the data position, and the
splits (different ``split_id``) never share a batch: 'train' trains, 'eval' is the
validation split that selection (``best/``, sweep ranking) reads, and 'test' is read
once at the end of a run, never for selection.

Batch keys (see ``Task.batch``):
  inputs       int32 [batch, time] tokens (``Spec.input_vocab > 0``) or
               float32 [batch, time, input_features] (``input_vocab == 0``).
  targets      target='sequence': int32 [batch] (cross_entropy) or float32
               [batch, num_outputs] (mse); target='steps': int32 [batch, time] or
               float32 [batch, time, num_outputs] (mse; bernoulli: 0 or 1).
  lengths      optional int32 [batch]: valid steps, padding after them.
  target_mask  optional float32 [batch, time]: 1 where a step's target counts.
  reset        stateful tasks only: bool [], start the streams again from zeros.
"""
import dataclasses
import os
import typing

import numpy as np

from seqlab import seq2seq_metrics

SPLITS = {'train': 0, 'eval': 1, 'test': 2}  # split name -> split id in the generator's seed
HELD_OUT = ('eval', 'test')  # the splits read once, in order (validation, test)
TARGETS = ('sequence', 'steps')
LOSS_METRICS = {  # loss -> the metrics ``losses.loss_and_metrics`` returns for it
    'cross_entropy': ('loss', 'count', 'cross_entropy', 'accuracy', 'bpc', 'perplexity'),
    'mse': ('loss', 'count', 'mse', 'mae'),
    'bernoulli': ('loss', 'count', 'nll'),
}
# Which way each eval metric is better: those above, and the decoded ones seq2seq runs
# add (``seqlab.models.decoded_metrics``).
METRIC_MODES = {'loss': 'min', 'cross_entropy': 'min', 'accuracy': 'max', 'bpc': 'min',
                'perplexity': 'min', 'mse': 'min', 'mae': 'min', 'nll': 'min',
                **seq2seq_metrics.METRIC_MODES}
MODELS = ('sequence', 'seq2seq')


@dataclasses.dataclass(frozen=True)
class Spec:
  """What the model and the loss need to know about a task.

  input_vocab: > 0: inputs are int32 tokens [batch, time]; 0: float32 features
    [batch, time, input_features].
  input_features: feature count when ``input_vocab == 0``, else 0.
  target: 'sequence' (one target per sequence) or 'steps' (one per step).
  num_outputs: classes for 'cross_entropy', output dims for 'mse', independent binary
    units for 'bernoulli' (e.g. the 88 pitches of a piano-roll frame).
  loss: 'cross_entropy', 'mse' or 'bernoulli'.
  metric: the main eval metric, a key of ``losses.loss_and_metrics``'s metrics;
    ``metric_mode`` says which way it is better ('min' or 'max').
  baseline: the published trivial-baseline value of ``metric``, if any.
  fixed_length: the time length when every sequence has the same length.
  stateful: batches are consecutive chunks of ``batch`` parallel streams; the
    model's final carry of one batch is the initial carry of the next (truncated
    backpropagation through time), reset to zeros where the batch's scalar 'reset'
    is true (a stream starts again). Eval batches are read in order the same way.
  model: 'sequence' (``SequenceModel``) or 'seq2seq' (``Seq2Seq``: token inputs,
    target='steps', cross_entropy; batches as in ``seqlab.tokens``).
  causal: the target of step t is the input of step t + 1 (a language model), so the
    model must not read ahead: ``models.build_model`` refuses a bidirectional encoder.
    Needs target='steps'.
  """
  input_vocab: int
  input_features: int
  target: str
  num_outputs: int
  loss: str
  metric: str
  baseline: float | None = None
  fixed_length: int | None = None
  stateful: bool = False
  model: str = 'sequence'
  causal: bool = False

  @property
  def metric_mode(self) -> str:
    return METRIC_MODES[self.metric]

  @property
  def decodes(self) -> bool:
    """Its model decodes (``Seq2Seq.decodes``): its runs add the ``decode_*`` eval metrics."""
    return self.model == 'seq2seq'

  def __post_init__(self):
    _check_choice('target', self.target, TARGETS)
    _check_choice('model', self.model, MODELS)
    if self.model == 'seq2seq' and (self.target, self.loss, self.input_vocab > 0) != (
        'steps', 'cross_entropy', True):
      raise ValueError("Spec.model='seq2seq' needs token inputs, target='steps' and "
                       "loss='cross_entropy'")
    if self.causal and self.target != 'steps':
      raise ValueError("Spec.causal=True needs target='steps' (a target per step)")
    _check_choice('loss', self.loss, tuple(LOSS_METRICS))
    _check_choice('metric', self.metric, tuple(m for m in LOSS_METRICS[self.loss] if m != 'count'))
    if self.input_vocab < 0 or (self.input_vocab > 0) == (self.input_features > 0):
      raise ValueError('Spec needs exactly one of input_vocab > 0 (tokens) or '
                       f'input_features > 0 (features), got input_vocab={self.input_vocab}, '
                       f'input_features={self.input_features}')
    if self.num_outputs <= 0:
      raise ValueError(f'Spec.num_outputs must be positive, got {self.num_outputs}')


class Task(typing.Protocol):
  """A source of deterministic batches described by ``spec``."""
  spec: Spec

  def batch(self, split: str, step: int, batch_size: int) -> dict[str, np.ndarray]:
    """Batch ``step`` of ``split``; a pure function of (task seed, split, step, batch_size)."""

  def num_eval_batches(self, batch_size: int, split: str = 'eval') -> int:
    """The held-out ``split`` ('eval' or 'test') is batches ``0 .. n - 1``."""


def _check_choice(name: str, value, choices: tuple):
  if value not in choices:
    raise ValueError(f'Spec.{name}={value!r} is not valid; choose one of: {", ".join(choices)}')


def check_int(key: str, value, minimum: int = 1) -> int:
  """``value`` as an int if it is an integer >= ``minimum``; else ValueError naming ``key``."""
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
    need = 'a positive integer' if minimum == 1 else f'an integer >= {minimum}'
    raise ValueError(f'{key} must be {need}, got {value!r}')
  return int(value)


def read_config(task_cfg, defaults: dict) -> dict:
  """The task's keys from ``task_cfg`` (never written), ``defaults`` filling the gaps.

  ``defaults`` maps every key the task accepts to its default, ``None`` for a
  required key. Unknown or missing keys raise ValueError naming the key.
  """
  name = task_cfg['name']
  unknown = sorted(set(task_cfg.keys()) - set(defaults) - {'name'})
  if unknown:
    raise ValueError(f'task.{unknown[0]} is not a key of task {name!r}; valid keys: '
                     f'{", ".join(["name", *defaults])}')
  values = {k: task_cfg[k] if k in task_cfg else v for k, v in defaults.items()}
  missing = [k for k, v in values.items() if v is None]
  if missing:
    raise ValueError(f'task.{missing[0]} is required by task {name!r}')
  return values


def check_held_out(split: str) -> str:
  """``split`` if it is a held-out split ('eval' or 'test'); else ValueError naming them."""
  if split not in HELD_OUT:
    raise ValueError(f'split={split!r} is not held out; choose one of: {", ".join(HELD_OUT)}')
  return split


def rng(seed: int, split: str, step: int) -> np.random.Generator:
  """The generator of batch ``step`` of ``split``: ``default_rng([seed, split_id, step])``."""
  if split not in SPLITS:
    raise ValueError(f'split={split!r} is not valid; choose one of: {", ".join(SPLITS)}')
  check_int('step', step, minimum=0)
  return np.random.default_rng([seed, SPLITS[split], step])


def num_batches(examples: int, batch_size: int) -> int:
  """Batches of ``batch_size`` that cover ``examples``: ceil(examples / batch_size).

  The last batch is full size (shapes stay fixed, so eval compiles once), so the
  eval set holds ``num_batches * batch_size >= examples`` examples; like every
  batch, it depends on ``batch_size`` (keep the eval batch size fixed to compare runs).
  """
  check_int('batch_size', batch_size)
  return -(-examples // batch_size)


def cache_dir(configured: str = '') -> str:
  """Where tasks keep data they make on first use: ``configured`` (a task's
  ``task.cache_dir``) if set, else ``$XDG_CACHE_HOME/seqlab``, else ``~/.cache/seqlab``."""
  if configured:
    return configured
  root = os.environ.get('XDG_CACHE_HOME') or os.path.join(os.path.expanduser('~'), '.cache')
  return os.path.join(root, 'seqlab')

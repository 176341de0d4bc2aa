"""Fitting a learned preference model to labelled comparisons: comparison
sets drawn from any sampler and labelled by any oracle
(:func:`make_comparisons`), maximum likelihood in one compiled call
(:func:`fit`), and the fit scored against the ground truth
(:func:`evaluate_fit`).

The loss is the binary cross-entropy of the logit ``d`` (``P =
sigmoid(d)``) against labels ``o`` (Bernoulli outcomes or probabilities),
``L = E[o softplus(-d) + (1 - o) softplus(d)]``, minimized with optax's
AdamW on minibatches drawn with replacement inside a jitted ``lax.scan``.
"""

from __future__ import annotations

import functools
from typing import Callable

import chex
import flax.struct
import jax
import jax.numpy as jnp
import optax

from nash_jax.distributions import check_outcome, sample_outcome
from nash_jax.environments.core import TokenContexts
from nash_jax.errors import ConfigError
from nash_jax.oracles.core import PreferenceOracle
from nash_jax.oracles.learned import PreferenceModel
from nash_jax.precision import in_float32


@flax.struct.dataclass
class Pairs:
  """Ordered pairs of responses to prompts (leaves lead with ``[M]``).

  Attributes:
    x: :class:`TokenContexts` of the prompts.
    y: ``[M, L]`` int first responses.
    y_prime: ``[M, L]`` int second responses.
  """

  x: TokenContexts
  y: chex.Array
  y_prime: chex.Array

  def __len__(self) -> int:
    return self.y.shape[0]


@flax.struct.dataclass
class Comparisons:
  """Labelled comparisons.

  Attributes:
    pairs: :class:`Pairs` ``[M]``.
    labels: ``[M]`` what training sees: the labelling oracle's outcomes
      (Bernoulli draws, or its probabilities).
    probabilities: ``[M]`` the labelling oracle's ``P(y > y'|x)`` (the
      ground truth when the annotators label).
  """

  pairs: Pairs
  labels: chex.Array
  probabilities: chex.Array


def make_comparisons(key: chex.PRNGKey, contexts: Callable,
                     sample: Callable, oracle: PreferenceOracle,
                     oracle_params, num_train: int, num_held_out: int,
                     outcome: str = 'bernoulli',
                     sample_opponent: Callable | None = None):
  """A labelled comparison set and a held-out set from one draw.

  ``x ~ contexts(key, M)``, ``y ~ sample(key, x)``, ``y' ~
  sample_opponent(key, x)`` (default ``sample``), all independent, then one
  query each: ``o = oracle_outcomes(...)``, ``M = num_train +
  num_held_out``. The first ``num_train`` pairs are the training set, the
  rest the held-out set (independent draws; in a small game the same pair
  may occur in both).

  Args:
    key: PRNG key.
    contexts: ``(key, n) -> TokenContexts`` (e.g. ``partial(
      tokens.sample_contexts, env_params)``).
    sample: ``(key, x) -> y [n, L]``, any response sampler (a policy's
      ``sample`` with its params bound, or uniform over listed responses).
    oracle: the labelling oracle.
    oracle_params: its params.
    num_train: training pairs (``>= 1``).
    num_held_out: held-out pairs (``>= 0``).
    outcome: 'bernoulli' (sampled labels) or 'probability' (``o = P``).
    sample_opponent: sampler of ``y'`` (default: ``sample``).

  Returns:
    ``(train, held_out)`` :class:`Comparisons`. Preference queries spent:
    ``num_train + num_held_out``.
  """
  check_outcome(outcome)
  if num_train < 1 or num_held_out < 0:
    raise ConfigError('num_comparisons', f'need num_train >= 1 and '
                      f'num_held_out >= 0, got {num_train} and '
                      f'{num_held_out}')
  sample_opponent = sample if sample_opponent is None else sample_opponent
  x_key, y_key, opp_key, o_key = jax.random.split(key, 4)
  total = num_train + num_held_out
  x = contexts(x_key, total)
  y = sample(y_key, x)
  y_prime = sample_opponent(opp_key, x)
  prob = oracle.probability(oracle_params, x, y, y_prime)
  labels = sample_outcome(o_key, prob, outcome)
  data = Comparisons(Pairs(x, y, y_prime), labels, prob)
  train = jax.tree.map(lambda a: a[:num_train], data)
  held_out = jax.tree.map(lambda a: a[num_train:], data)
  return train, held_out


def pairwise_loss(d: chex.Array, o: chex.Array) -> chex.Array:
  """Binary cross-entropy of ``P = sigmoid(d)`` against ``o`` in ``[0, 1]``:
  ``o softplus(-d) + (1 - o) softplus(d)`` (per pair; its minimum over
  ``d`` is at ``sigmoid(d) = o``)."""
  chex.assert_equal_shape([d, o])
  o = o.astype(d.dtype)
  return o * jax.nn.softplus(-d) + (1 - o) * jax.nn.softplus(d)


def fit_optimizer(learning_rate, weight_decay,
                  max_grad_norm) -> optax.GradientTransformation:
  """The optimizer of :func:`fit`: global-norm clipping, then AdamW
  (Loshchilov and Hutter, 2019), both in float32 for bfloat16 parameters
  (:func:`nash_jax.precision.in_float32`: in bfloat16 a second moment
  cannot decay by a factor 0.999)."""
  return in_float32(optax.chain(
      optax.clip_by_global_norm(max_grad_norm),
      optax.adamw(learning_rate, weight_decay=weight_decay)))


@functools.partial(jax.jit, static_argnames=('model', 'num_steps',
                                              'batch_size', 'return_losses'))
def fit(key: chex.PRNGKey, model: PreferenceModel, init_params: dict,
        pairs: Pairs, labels: chex.Array, num_steps: int, batch_size: int,
        learning_rate=1e-3, weight_decay=0.0, max_grad_norm=1.0,
        return_losses: bool = False):
  """Maximum likelihood on labelled pairs, in one compiled call.

  Minimizes ``E_{(x, y, y', o)} [o softplus(-d) + (1 - o) softplus(d)]``
  (:func:`pairwise_loss`) with ``d = model.logit(params, x, y, y')``: the
  Bradley-Terry likelihood for a reward model, the cross-entropy of
  ALGORITHMS.md section 6 for a pairwise model. Each of ``num_steps``
  steps (a ``lax.scan``) draws ``batch_size`` pairs uniformly with
  replacement and takes one step of
  ``clip_by_global_norm(max_grad_norm)`` then ``adamw(learning_rate,
  weight_decay)`` (Adam, Kingma & Ba 2014, arXiv 1412.6980, with decoupled
  weight decay, Loshchilov & Hutter 2017, arXiv 1711.05101; plain Adam at
  ``weight_decay = 0``).

  Args:
    key: PRNG key of the minibatch draws.
    model: a :class:`PreferenceModel` (static).
    init_params: the starting parameters (``model.init(key)``).
    pairs: :class:`Pairs` ``[M]``.
    labels: ``[M]`` outcomes or probabilities in ``[0, 1]``.
    num_steps: optimizer steps (static).
    batch_size: pairs per step (static).
    learning_rate: Adam's step size (may be traced).
    weight_decay: decoupled weight decay (may be traced).
    max_grad_norm: global-norm clipping threshold (may be traced).
    return_losses: also return the ``[num_steps]`` minibatch losses.

  Returns:
    The fitted params (and the losses with ``return_losses``).
  """
  chex.assert_rank(labels, 1)
  chex.assert_axis_dimension(pairs.y, 0, labels.shape[0])
  num = labels.shape[0]
  optimizer = fit_optimizer(learning_rate, weight_decay, max_grad_norm)

  def loss_fn(params, batch, o):
    d = model.logit(params, batch.x, batch.y, batch.y_prime)
    return jnp.mean(pairwise_loss(d, o))

  def step(carry, step_key):
    params, opt_state = carry
    index = jax.random.randint(step_key, (batch_size,), 0, num)
    batch = jax.tree.map(lambda a: a[index], pairs)
    loss, grads = jax.value_and_grad(loss_fn)(params, batch, labels[index])
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return (optax.apply_updates(params, updates), opt_state), loss

  keys = jax.random.split(key, num_steps)
  (params, _), losses = jax.lax.scan(
      step, (init_params, optimizer.init(init_params)), keys)
  return (params, losses) if return_losses else params


def evaluate_fit(oracle: PreferenceOracle, params, pairs: Pairs,
                 probabilities: chex.Array) -> dict:
  """How well an oracle matches the ground truth on (held-out) pairs.

  With ``q = oracle.probability(params, ...)`` and ``p`` the ground
  truth's ``P(y > y'|x)``:

  * ``accuracy``: over pairs with ``p != 1/2`` (exact ties, e.g. equal
    annotator scores or ``y = y'``, are excluded), the fraction where
    ``q - 1/2`` has the sign of ``p - 1/2``; a ``q`` of exactly ``1/2``
    counts ``1/2`` (a fair coin's expected score). Chance is 1/2.
  * ``log_loss``: ``mean[-p log q - (1 - p) log(1 - q)]`` over all pairs,
    the cross-entropy against the ground-truth probabilities;
    ``excess_log_loss`` subtracts the ground truth's own entropy (the mean
    KL from ``p`` to ``q``, 0 for a perfect model).
  * ``num_pairs``, ``num_ties``.

  Jittable (``oracle`` static); returns a dict of scalars.
  """
  chex.assert_rank(probabilities, 1)
  q = oracle.probability(params, pairs.x, pairs.y, pairs.y_prime)
  p = probabilities.astype(q.dtype)
  ties = p == 0.5
  truth, guess = jnp.sign(p - 0.5), jnp.sign(q - 0.5)
  score = jnp.where(guess == 0, 0.5, (guess == truth).astype(q.dtype))
  counted = jnp.sum(~ties)
  accuracy = jnp.sum(jnp.where(ties, 0.0, score)) / jnp.maximum(counted, 1)
  eps = jnp.finfo(q.dtype).tiny
  xlogy = lambda a, b: jnp.where(a > 0, a * jnp.log(jnp.maximum(b, eps)), 0)
  log_loss = -jnp.mean(xlogy(p, q) + xlogy(1 - p, 1 - q))
  entropy = -jnp.mean(xlogy(p, p) + xlogy(1 - p, 1 - p))
  return {'accuracy': accuracy, 'log_loss': log_loss,
          'excess_log_loss': log_loss - entropy,
          'num_pairs': jnp.asarray(p.shape[0]), 'num_ties': jnp.sum(ties)}

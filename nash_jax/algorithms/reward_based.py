"""Reward-based and offline baselines through the same policy and trainer
(ALGORITHMS.md section 6).

What NLHF is compared with. All three learn from one fixed dataset of
``offline_pairs`` (``Q``) labelled comparisons collected at ``init`` from
the reference policy: ``x ~ rho``, ``y, y' ~ pi_ref(.|x)`` independently,
``o`` the oracle's outcome of ``y`` against ``y'`` (a Bernoulli label, or
``P(y > y'|x)`` itself with the probability oracle). Collecting it costs
``Q`` preference queries, counted in the state at ``init``; no step queries
the oracle again. The policy starts at its initial parameters (which are
``pi_ref`` for every policy class here), so the dataset's responses are
``pi_ref`` samples.

* ``dpo`` (Rafailov et al. 2023, arXiv 2305.18290): minibatches of the
  dataset, per comparison (:func:`nash_jax.rules.dpo_sample_loss`)
  ``-o log sigmoid(beta h) - (1 - o) log sigmoid(-beta h)`` with ``h = log
  pi(y)/pi_ref(y) - log pi(y')/pi_ref(y')`` (a hard label ``o`` picks the
  usual ``-log sigmoid(beta h_{w,l})``).
* ``offline_ipo`` (Azar et al. 2023, arXiv 2310.12036): ``(h - (o -
  1/2)/beta)^2``, the IPO loss with soft labels. It is
  :func:`nash_jax.rules.online_ipo_sample_loss` on the fixed dataset (the
  expectation of ``(h_{w,l} - 1/(2 beta))^2`` over the label is this loss
  up to a constant).
* ``bt_rlhf`` (Christiano et al. 2017, arXiv 1706.03741; Ouyang et al.
  2022, arXiv 2203.02155): at ``init``, a Bradley-Terry reward ``r_phi`` is
  fitted by maximum likelihood to the dataset (``reward_steps`` adam steps
  of ``reward_learning_rate`` on minibatches of ``batch_size``; loss
  ``-o log sigmoid(d) - (1 - o) log sigmoid(-d)``, ``d = r(x, y) - r(x,
  y')``). Each step then samples ``y, y' ~ pi_theta`` for a batch of
  contexts and ascends ``E r(x, y) - beta KL(pi_theta || pi_ref)`` by
  REINFORCE on both responses (advantage ``r - beta log pi/pi_ref`` minus
  the mean advantage of the other comparisons; ALGORITHMS.md section 6).
  Its optimum is ``pi ∝ pi_ref exp(r/beta)``: on an intransitive oracle no
  ``r`` represents ``P`` (claim 6).

The reward model is injected like the policy (:class:`RewardModel`):
:func:`table_reward_model` is a table ``r[x, y]`` over listed responses (a
tabular game, or the listable token game through its response index): the
most expressive BT model, so what it misses is the BT assumption, not
capacity. The dataset lives in ``SampledState.data`` (``bt_rlhf``: the
fitted reward parameters instead).
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import chex
import jax
import jax.numpy as jnp
import optax

from nash_jax import rules
from nash_jax.algorithms.base import (
  Algorithm,
  AlgorithmConfig,
  SampledState,
  make_optimizer,
  shard_batch,
)
from nash_jax.algorithms.sampled import Batch, draw_batch, pair_baseline
from nash_jax.environments.core import Environment
from nash_jax.policies.core import Policy
from nash_jax.precision import in_float32


class RewardModel(NamedTuple):
  """A reward model ``r_phi(x, y)`` as pure functions.

  Attributes:
    name: for messages.
    init: ``(key, x_all) -> phi`` from every context's data.
    reward: ``(phi, x, y) -> [B]``.
  """

  name: str
  init: Callable[[chex.PRNGKey, Any], Any]
  reward: Callable[[Any, Any, chex.Array], chex.Array]


def table_reward_model(num_responses: int | None = None,
                       response_index: Callable = lambda y: y
                       ) -> RewardModel:
  """``r[x, y]``: one value per context and listed response, zero at init.

  Args:
    num_responses: the table's columns, or None for a tabular game's ``n``
      (read from the contexts' ``log_ref [X, n]``).
    response_index: ``y -> [B]`` table columns of responses (identity for a
      tabular game's action indices).
  """

  def init(key, x):
    del key
    n = x.log_ref.shape[-1] if num_responses is None else num_responses
    dtype = getattr(x, 'log_ref', None)
    dtype = jnp.result_type(float) if dtype is None else dtype.dtype
    return jnp.zeros((x.index.shape[0], n), dtype)

  def reward(phi, x, y):
    return phi[x.index, response_index(y)]

  return RewardModel('table', init, reward)


# A fixed dataset of labelled comparisons has the fields of a batch
# (leading axis ``[Q]``).
Comparisons = Batch


def collect(key, policy: Policy, env: Environment, env_params, params,
            num_pairs: int) -> Comparisons:
  """``Q`` comparisons of two responses of ``pi_params`` (the reference at
  ``init``), each labelled by the oracle (one preference query each):
  :func:`~nash_jax.algorithms.sampled.draw_batch` with ``pi_params`` as
  both players."""
  return draw_batch(key, policy, env, env_params, params, params, num_pairs)


def minibatch(key, data: Comparisons, batch_size: int) -> Comparisons:
  """``batch_size`` comparisons drawn uniformly with replacement, split over
  the ``'data'`` devices of the mesh in context (:func:`~nash_jax.
  algorithms.base.shard_batch`; a no-op without one)."""
  size = data.outcomes.shape[0]
  index = jax.random.randint(key, (batch_size,), 0, size)
  return shard_batch(jax.tree.map(lambda a: a[index], data))


def bt_loss(reward: Callable, phi, data: Comparisons) -> chex.Array:
  """Mean Bradley-Terry negative log-likelihood of the comparisons,
  ``-o log sigmoid(d) - (1 - o) log sigmoid(-d)``, ``d = r(x, y) - r(x,
  y')``."""
  d = (reward(phi, data.contexts, data.responses) -
       reward(phi, data.contexts, data.opponents))
  return jnp.mean(rules.dpo_sample_loss(d, data.outcomes, 1.0))


def reward_optimizer(learning_rate) -> optax.GradientTransformation:
  """The reward fit's adam, in float32 for bfloat16 parameters
  (:func:`nash_jax.precision.in_float32`)."""
  return in_float32(optax.adam(learning_rate))


def fit_reward(key, model: RewardModel, phi, data: Comparisons,
               num_steps: int, batch_size: int, learning_rate):
  """``num_steps`` adam steps of :func:`bt_loss` on minibatches; returns
  the fitted ``phi`` (jittable; one ``lax.scan``)."""
  optimizer = reward_optimizer(learning_rate)

  def step(carry, key):
    phi, opt_state = carry
    grads = jax.grad(lambda p: bt_loss(model.reward, p, minibatch(
        key, data, batch_size)))(phi)
    updates, opt_state = optimizer.update(grads, opt_state, phi)
    return (optax.apply_updates(phi, updates), opt_state), None

  (phi, _), _ = jax.lax.scan(step, (phi, optimizer.init(phi)),
                             jax.random.split(key, num_steps))
  return phi


def _count_tokens(policy: Policy, *responses):
  if policy.num_tokens is None:
    return jnp.zeros((), jnp.int32)
  return sum(policy.num_tokens(y) for y in responses).astype(jnp.int32)


def _make(name: str, config: AlgorithmConfig, policy: Policy,
          env: Environment, make_data: Callable, loss_fn: Callable,
          batch_fn: Callable) -> Algorithm:
  """The shared skeleton: ``make_data(key, env_params, params, x_all) ->
  (data, tokens)`` at init; each step ``batch = batch_fn(key, state,
  env_params)``, then one optax step on ``loss_fn(params, batch, data)``."""
  optimizer = make_optimizer(config)

  def init(key, env_params) -> SampledState:
    init_key, data_key, key = jax.random.split(key, 3)
    x_all = env.all_contexts(env_params)
    params = policy.init(init_key, x_all, env.reference(env_params))
    data, tokens = make_data(data_key, env_params, params, x_all)
    zero = jnp.zeros((), jnp.int32)
    return SampledState(
        params=params, opt_state=optimizer.init(params), anchor=None,
        half=None, step=zero,
        preference_queries=zero + config.offline_pairs,
        generated_tokens=tokens, key=key, data=data)

  def step(state: SampledState, env_params):
    key, batch_key = jax.random.split(state.key)
    batch, tokens = batch_fn(batch_key, state, env_params)
    loss, grads = jax.value_and_grad(loss_fn)(state.params, batch,
                                              state.data)
    updates, opt_state = optimizer.update(grads, state.opt_state,
                                          state.params)
    return state.replace(
        params=optax.apply_updates(state.params, updates),
        opt_state=opt_state, step=state.step + 1,
        generated_tokens=state.generated_tokens + tokens, key=key), {
            'loss': loss}

  return Algorithm(name, init, step, policy)


def _dataset(config, policy, env):
  def make_data(key, env_params, params, x_all):
    del x_all
    data = collect(key, policy, env, env_params, params,
                   config.offline_pairs)
    return data, _count_tokens(policy, data.responses, data.opponents)
  return make_data


def _from_dataset(config):
  def batch_fn(key, state, env_params):
    del env_params
    return (minibatch(key, state.data, config.batch_size),
            jnp.zeros((), jnp.int32))
  return batch_fn


def _offline(name: str, sample_loss: Callable):
  def make(config: AlgorithmConfig, policy: Policy,
           env: Environment) -> Algorithm:
    def loss_fn(params, batch: Comparisons, data):
      del data
      log_y = policy.log_prob(params, batch.contexts, batch.responses)
      log_y_prime = policy.log_prob(params, batch.contexts, batch.opponents)
      h = (log_y - batch.log_ref) - (log_y_prime - batch.log_ref_opponent)
      return jnp.mean(sample_loss(h, batch.outcomes, config.beta))

    return _make(name, config, policy, env, _dataset(config, policy, env),
                 loss_fn, _from_dataset(config))
  return make


make_dpo = _offline('dpo', rules.dpo_sample_loss)
make_dpo.__doc__ = 'DPO on a fixed dataset of pi_ref comparisons.'
make_offline_ipo = _offline('offline_ipo', rules.ipo_sample_loss)
make_offline_ipo.__doc__ = 'IPO on a fixed dataset of pi_ref comparisons.'


def make_bt_rlhf(config: AlgorithmConfig, policy: Policy, env: Environment,
                 reward_model: RewardModel | None = None) -> Algorithm:
  """RLHF against a Bradley-Terry reward fitted at ``init`` (module
  docstring); ``state.data`` holds the fitted reward parameters. The
  default reward model is a tabular game's table."""
  beta = config.beta
  reward_model = reward_model or table_reward_model()

  def make_data(key, env_params, params, x_all):
    data_key, phi_key, fit_key = jax.random.split(key, 3)
    data = collect(data_key, policy, env, env_params, params,
                   config.offline_pairs)
    phi = fit_reward(fit_key, reward_model, reward_model.init(phi_key, x_all),
                     data, config.reward_steps, config.batch_size,
                     config.reward_learning_rate)
    return phi, _count_tokens(policy, data.responses, data.opponents)

  def batch_fn(key, state, env_params):
    x_key, y_key, opp_key = jax.random.split(key, 3)
    params = jax.lax.stop_gradient(state.params)
    x = shard_batch(env.contexts(env_params, x_key, config.batch_size))
    y = shard_batch(policy.sample(y_key, params, x, 0.0, None))
    y_prime = shard_batch(policy.sample(opp_key, params, x, 0.0, None))
    batch = shard_batch(Comparisons(
        x, y, y_prime, jnp.zeros(y.shape[:1]),
        env.ref_log_prob(env_params, x, y),
        env.ref_log_prob(env_params, x, y_prime)))
    return batch, _count_tokens(policy, y, y_prime)

  def loss_fn(params, batch: Comparisons, phi):
    log_y = policy.log_prob(params, batch.contexts, batch.responses)
    log_y_prime = policy.log_prob(params, batch.contexts, batch.opponents)
    r = reward_model.reward(phi, batch.contexts, batch.responses)
    r_prime = reward_model.reward(phi, batch.contexts, batch.opponents)
    adv = r - beta * (log_y - batch.log_ref)
    adv_prime = r_prime - beta * (log_y_prime - batch.log_ref_opponent)
    baseline = pair_baseline(adv, adv_prime)
    return jnp.mean(
        rules.self_play_pg_sample_loss(log_y, batch.log_ref, r, baseline,
                                       beta) +
        rules.self_play_pg_sample_loss(log_y_prime, batch.log_ref_opponent,
                                       r_prime, baseline, beta)) / 2

  return _make('bt_rlhf', config, policy, env, make_data, loss_fn, batch_fn)

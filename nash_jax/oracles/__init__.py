r"""Preference oracles on token sequences behind one protocol: the ground-truth
annotator population, learned models (a Bradley-Terry reward and a pairwise
preference model on a transformer with a scalar head) and an LLM judge
(ALGORITHMS.md section 6).

Modules: :mod:`~nash_jax.oracles.core` (the protocol, outcomes, an
environment answered by an oracle), :mod:`~nash_jax.oracles.pairs` (the
pair layout and the exact links), :mod:`~nash_jax.oracles.annotators`,
:mod:`~nash_jax.oracles.learned`, :mod:`~nash_jax.oracles.fitting` and
:mod:`~nash_jax.oracles.judge`; everything public is re-exported here.

The protocol (:class:`PreferenceOracle`): pairs of responses for a batch of
prompts in, ``P(y > y' | x)`` out::

  probability(params, x: TokenContexts, y [B, L], y_prime [B, L]) -> [B]

``params`` is the oracle's data: the annotators' sharpness and weights
(:class:`AnnotatorParams`, or the environment's ``TokenEnvParams``), a
learned model's parameters, or the judge language model's parameters. Every
function is pure, jittable and vmappable; parameters are plain dict pytrees.

Responses follow :mod:`nash_jax.policies.sequence`: content tokens, then
``EOS``, then padding; a response cut at ``L`` has no ``EOS``. The tokens
after the first ``EOS`` are never read: every model replaces them by
``PAD`` and masks them as attention keys, and RoPE positions count real
tokens only (``cumsum(mask) - 1``), so a padded sequence gives exactly the
result of its unpadded concatenation (up to float rounding).

Exact antisymmetry. All three implementations satisfy ``P(y > y'|x) +
P(y' > y|x) = 1`` and ``P(y > y|x) = 1/2`` exactly in floating point, not
just mathematically. Two devices make it so:

* the pair is put in a canonical order first (:func:`canonical_pairs`:
  lexicographic on the tokens through the first ``EOS``), the model is run
  on ``(lo, hi)`` and the sign of its antisymmetric statistic is flipped
  when ``y`` came second; so ``(y, y')`` and ``(y', y)`` run the very same
  computation, and equal responses get exactly ``1/2``;
* the link is evaluated as in
  :func:`nash_jax.environments.tokens.population_preference`:
  ``h = sigmoid(|d|)`` (or ``min(1/2 + |A|, 1)``) in ``[1/2, 1]``, and
  ``1 - h`` is exact there (Sterbenz), so ``P(d) + P(-d) = 1``.

Learned models (:class:`PreferenceModel`). A scalar-head transformer
(:func:`scorer_score`) reads a token sequence, left-padded prompt then
response segments, and returns ``w . h_last + b`` with ``h_last`` the
final-normed hidden state at the last real token
(:func:`nash_jax.policies.transformer.hidden_states`). Parameters::

  {'body': transformer params (its own TransformerConfig),
   'head': {'w': [D], 'b': []}}

* Bradley-Terry reward (Bradley & Terry 1952; the RLHF reward model of
  Christiano et al. 2017, arXiv 1706.03741, and Ouyang et al. 2022, arXiv
  2203.02155): ``r(x, y)`` = score of ``[prompt, y]``, ``P(y > y'|x) =
  sigmoid(r(x, y) - r(x, y'))`` (:func:`make_reward_model`; its
  ``reward(params, x, y) -> [B]`` is what RLHF maximizes).
* Pairwise preference model (PairRM, Jiang et al. 2023, arXiv 2306.02561;
  the general preference model of Munos et al. 2023, arXiv 2312.00886):
  ``f(x, y, y')`` = score of ``[prompt, y, SEP, y']``, ``P(y > y'|x) =
  sigmoid(f(x, y, y') - f(x, y', y))``, antisymmetric by construction and
  able to represent intransitive preferences, which no reward can
  (:func:`make_pairwise_model`).

Both are trained by :func:`fit`: binary cross-entropy of the logit ``d``
(``P = sigmoid(d)``) against labels ``o`` (Bernoulli outcomes or
probabilities), ``L = E[o softplus(-d) + (1 - o) softplus(d)]``, with
optax's Adam on minibatches drawn with replacement inside a jitted
``lax.scan``. :func:`make_comparisons` builds labelled comparison sets from
any response sampler and any oracle; :func:`evaluate_fit` scores a fit
against the ground truth on held-out pairs.

LLM judge (:func:`make_judge`; LLM-as-a-judge, Zheng et al. 2023, arXiv
2306.05685, who measure its position bias and propose evaluating both
orders): a language model reads ``[prefix, prompt, marker_1, y, marker_2,
y', suffix]`` (a :class:`JudgeTemplate` of token-id segments) and
``p(x, y, y')`` is its next-token softmax restricted to the two answer
tokens, ``p = exp(l_1) / (exp(l_1) + exp(l_2)) = sigmoid(l_1 - l_2)``.
Averaged over both orders,

  P(y > y'|x) = 1/2 [p(x, y, y') + 1 - p(x, y', y)],

which removes a constant position bias and makes ``P + P^T = 1``.
"""


from nash_jax.oracles.annotators import (
  AnnotatorParams,
  annotator_oracle,
  annotator_params,
)
from nash_jax.oracles.core import (
  MODEL_KINDS,
  PreferenceOracle,
  oracle_outcomes,
  with_oracle,
)
from nash_jax.oracles.fitting import (
  Comparisons,
  Pairs,
  evaluate_fit,
  fit,
  fit_optimizer,
  make_comparisons,
  pairwise_loss,
)
from nash_jax.oracles.judge import (
  JudgeTemplate,
  judge_first_probability,
  judge_sequence,
  make_judge,
  synthetic_judge_template,
)
from nash_jax.oracles.learned import (
  PreferenceModel,
  init_scorer,
  make_pairwise_model,
  make_preference_model,
  make_reward_model,
  scorer_score,
)
from nash_jax.oracles.pairs import (
  antisymmetric_probability,
  canonical_pairs,
  clean_responses,
  logit_probability,
)

__all__ = [
    'AnnotatorParams', 'Comparisons', 'JudgeTemplate', 'MODEL_KINDS',
    'Pairs', 'PreferenceModel', 'PreferenceOracle',
    'annotator_oracle', 'annotator_params', 'antisymmetric_probability',
    'canonical_pairs', 'clean_responses', 'evaluate_fit', 'fit',
    'fit_optimizer', 'init_scorer', 'judge_first_probability',
    'judge_sequence', 'logit_probability', 'make_comparisons', 'make_judge',
    'make_pairwise_model', 'make_preference_model', 'make_reward_model',
    'oracle_outcomes', 'pairwise_loss', 'scorer_score',
    'synthetic_judge_template', 'with_oracle',
]

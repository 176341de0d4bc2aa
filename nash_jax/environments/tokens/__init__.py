"""An exactly solvable token environment: prompts, token responses short
enough to list, and an intransitive preference oracle on token sequences
(ALGORITHMS.md section 6, "Listable token game").

Token ids (shared with the transformer policy): ``PAD = 0``, ``BOS = 1``,
``EOS = 2`` and the ``V`` content tokens ``3 .. 3 + V - 1``; the model
vocabulary has ``V + 3`` ids (:func:`model_vocab_size`).

Responses. A response ``y`` is ``[L]`` int32 (``L = max_length``): ``k``
content tokens, then ``EOS``, then ``PAD``; a response of ``L`` content
tokens has no ``EOS`` (it was cut at ``L``). Its content is the leading run
of content tokens (whatever follows the first non-content token is ignored,
by the oracle and by :func:`response_index` alike). There are
``N = sum_{k=0}^{L} V^k`` responses (:func:`num_responses`; ``V = L = 4``:
341). Canonical order (:func:`list_responses`): by length ``k = 0..L``,
then lexicographically in the content tokens, i.e. response number::

  index(y) = sum_{j<k} V^j + sum_{t<k} (y_t - 3) V^(k-1-t)

(a mixed-radix code, :func:`response_index`). So index 0 is the empty
response ``[EOS, PAD, ...]``, indices ``1..V`` the one-token responses.

Prompts. ``X = num_prompts`` prompts of ``prompt_length`` tokens each
(``BOS`` included): ``[BOS, topic_x, c_1, ..., c_{P-2}]``. The TOPIC of
prompt ``x`` is the token right after ``BOS``, ``topic_x = 3 + (x mod V)``
(distinct across prompts as far as ``V`` allows); the fillers ``c_i`` are
uniform content tokens drawn by ``numpy.random.default_rng(seed)``. All
prompts have the same length; they are stored left-padded with a mask
anyway (:class:`~nash_jax.environments.core.TokenContexts`). The context
weights ``rho`` are uniform.

The oracle: three annotators, each with an interpretable score of the
response (:func:`annotator_scores`; ``valid`` marks the content tokens):

* ``on_topic``: ``s_1(x, y) = #{t : y_t = topic_x}``, mentions of the
  prompt's topic;
* ``concise``: ``s_2(y) = -#{t : valid_t}``, shorter is better;
* ``diverse``: ``s_3(x, y) = #{distinct content tokens of y other than
  topic_x}``, breadth beyond the topic.

Annotator ``k`` prefers by a Bradley-Terry link of sharpness ``tau_k``,
``P_k(y > y'|x) = sigmoid(tau_k (s_k(x, y) - s_k(x, y')))``, and the
population's preference is ``P = sum_k w_k P_k`` (weights ``w`` normalized
to sum 1; uniform by default). The scores are computed in JAX from the
token arrays for any ``L`` (sorting, not a vocabulary table), so the same
oracle judges responses far too long to list. ``P(y > y'|x) + P(y' > y|x) =
1`` holds exactly in floating point (:func:`population_preference`).

Why these three. The three scores compete for the same ``L`` slots: topic
mentions and off-topic breadth both need tokens, and each token costs the
concise annotator. No response is best on two of them at once, and the
majority preference is intransitive. The named Condorcet cycle
(:data:`CONDORCET_STYLES`, for every prompt, ``a, b, c`` the off-topic
tokens in increasing order)::

  terse [a]  >  on_topic [t, t, t]  >  diverse [t, a, b, c]  >  terse [a]

Each comparison's score differences are a permutation of ``(+2, +1, -3)``
(e.g. terse vs on_topic: topic -3, concise +2, diverse +1), so with equal
sharpness ``tau`` every edge has ``P = (sigmoid(2 tau) + sigmoid(tau) +
sigmoid(-3 tau)) / 3``: 0.622 at the default ``tau = 2``. Over all listed
responses there is no Condorcet winner, not even a weak one (a response
that nobody beats with ``P > 1/2``; :func:`condorcet_winners`). This holds
for every equal sharpness tried (``tau`` from 1/4 to 16) and for ``V >= 3,
L >= 4`` (tried: (3, 4), (4, 5), (5, 4), (3, 6)); it fails for strongly
unequal sharpness (e.g. ``tau = (0.25, 0.25, 1)``), and with ``L = 3`` or
``V = 2`` a short response (``[t, a]``, ``[a]``) is a weak winner (tied only
with its own permutations).

A length-loving annotator (``s = #content tokens``) in place of ``concise``
gives a winner: ``[t] * L`` is best on length and on topic at once, and
what any rival gains in breadth it has spent in topic mentions, so with
equal sharpness nothing beats it. (A search over fifteen such scores and
sharpness from 1/2 to 8 found no triple with a length lover and without a
brevity lover that is free of Condorcet winners.)

Defaults (:class:`TokenEnvSpec`): ``vocab_size = 4``, ``max_length = 4``
(``N = 341``), ``num_prompts = 4``, ``prompt_length = 3``, three
annotators of sharpness 2 and equal weight. The von Neumann winner of each
prompt mixes ``[t, t]``, ``[a, b]`` and ``[t, t, a, b]``, and
:func:`nash_jax.reference.equilibrium` solves ``pi*_beta`` of the induced
game in seconds. The fillers of a prompt do not enter the oracle: every
prompt's game is the same up to the relabelling of its topic (its
``pi_ref``, from the reference model, differs).

The environment (:func:`make_token_environment`) follows the protocol of
:mod:`nash_jax.environments.core`; its data is a :class:`TokenEnvParams`
built by :func:`token_env_params`. The reference model and the policy are
injected: the environment calls ``ref_log_prob_fn(reference, x, y)`` and
``policy.log_prob(params, x, y)`` and imports neither.

Modules (each imports only those before it): :mod:`.vocabulary` (token
ids, the listed responses and their index), :mod:`.annotators` (the
scores, the population preference, Condorcet winners), :mod:`.spec` (the
settings :class:`TokenEnvSpec` and their checks), :mod:`.prompts`,
:mod:`.environment` (the data, contexts, the exact game and the
environment) and :mod:`.styles` (the named Condorcet cycle).
"""

from nash_jax.environments.tokens.annotators import (
  ANNOTATORS,
  annotator_scores,
  condorcet_winners,
  oracle_probability,
  population_preference,
  preference_tensor_of,
)
from nash_jax.environments.tokens.environment import (
  DEFAULT_CHUNK_SIZE,
  TokenEnvParams,
  all_contexts,
  contexts_at,
  game_of,
  induced_game,
  listed_log_probs,
  make_token_environment,
  preference_probability,
  preference_tensor,
  sample_contexts,
  token_env_params,
)
from nash_jax.environments.tokens.prompts import (
  make_prompts,
  prompt_topic,
  prompt_topics,
)
from nash_jax.environments.tokens.spec import (
  TokenEnvSpec,
  check_spec,
)
from nash_jax.environments.tokens.styles import (
  CONDORCET_STYLES,
  Style,
  condorcet_cycle_probabilities,
)
from nash_jax.environments.tokens.vocabulary import (
  BOS,
  DEFAULT_MAX_RESPONSES,
  EOS,
  FIRST_CONTENT,
  NUM_SPECIAL,
  PAD,
  check_listable,
  content_mask,
  list_responses,
  make_response,
  model_vocab_size,
  num_responses,
  response_index,
  response_length,
)

__all__ = [
    'ANNOTATORS',
    'BOS',
    'CONDORCET_STYLES',
    'DEFAULT_CHUNK_SIZE',
    'DEFAULT_MAX_RESPONSES',
    'EOS',
    'FIRST_CONTENT',
    'NUM_SPECIAL',
    'PAD',
    'Style',
    'TokenEnvParams',
    'TokenEnvSpec',
    'all_contexts',
    'annotator_scores',
    'check_listable',
    'check_spec',
    'condorcet_cycle_probabilities',
    'condorcet_winners',
    'content_mask',
    'contexts_at',
    'game_of',
    'induced_game',
    'list_responses',
    'listed_log_probs',
    'make_prompts',
    'make_response',
    'make_token_environment',
    'model_vocab_size',
    'num_responses',
    'oracle_probability',
    'population_preference',
    'preference_probability',
    'preference_tensor',
    'preference_tensor_of',
    'prompt_topic',
    'prompt_topics',
    'response_index',
    'response_length',
    'sample_contexts',
    'token_env_params',
]

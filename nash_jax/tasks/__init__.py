"""The kinds of run, one module each, every one a
:class:`~nash_jax.experiment.task.Task` that the run kit
(:mod:`nash_jax.experiment`) runs:

* :mod:`~nash_jax.tasks.tabular`: a tabular game (``experiments.
  matrix_game``, ``experiments.compare``);
* :mod:`~nash_jax.tasks.token_game`: the listable token game with a
  transformer policy, exact metrics (``experiments.lm``);
* :mod:`~nash_jax.tasks.post_train`: a Hugging Face checkpoint, prompts and
  a judge (``experiments.post_train``);
* :mod:`~nash_jax.tasks.language_model`: what the two language-model runs
  share;
* :mod:`~nash_jax.tasks.oracles`: the registry of oracles that answer
  training queries (annotators, a learned model, a judge), with a builder
  per kind of run.

A new kind of run is one new module with a ``TASK``, listed in
:data:`TASKS`.
"""

from nash_jax.tasks import post_train, tabular, token_game

TASKS = {task.name: task for task in (tabular.TASK, token_game.TASK,
                                      post_train.TASK)}

__all__ = ['TASKS', 'post_train', 'tabular', 'token_game']

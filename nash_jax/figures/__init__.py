"""The figures that test the claims of ALGORITHMS.md section 5.

Each figure is a :class:`Figure`: ``compute(config, directory, log)`` runs
the experiment and writes CSV files into ``directory``; ``plot(directory)``
reads only those CSVs and writes ``<name>.png`` and ``<name>.pdf`` beside
them. :func:`compute` and :func:`plot` add the bookkeeping: ``result.json``
(the config, the wall time and the files) is written last, so a directory
without it holds no finished result and cannot be redrawn.

Adding a figure: write a module here with ``compute``, ``plot``,
``validate`` and a ``CLAIM`` line, add a :class:`Figure` of it to
:data:`FIGURES` (the order is the order of ``--figures`` by default), and a
config file ``experiments/configs/<name>.py`` with ``get_config(scale)``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import Callable

from nash_jax import io as io_lib
from nash_jax.figures import (
  convergence,
  language_model,
  nash_vs_reward,
  num_responses,
  sampled,
  stability,
)

RESULT_FILE = 'result.json'


@dataclasses.dataclass(frozen=True)
class Figure:
  """One figure: what it computes and how it is drawn.

  Attributes:
    name: the ``--figures`` name and the output sub-directory.
    claim: the ALGORITHMS.md section 5 claim it tests (one line).
    compute: ``(config, directory, log) -> list[str]``; writes CSV files
      into ``directory`` and returns their names (those ``plot`` reads).
    plot: ``(directory) -> None``; reads the CSVs, writes the images.
    validate: ``(config, directory) -> None``; raises a ``ConfigError``
      for a config that cannot run, before any work.
  """

  name: str
  claim: str
  compute: Callable[[dict, str, Callable[[str], None]], list[str]]
  plot: Callable[[str], None]
  validate: Callable[[dict, str], None]


FIGURES: dict[str, Figure] = {
    f.name: f for f in (
        Figure('convergence', convergence.CLAIM, convergence.compute,
               convergence.plot, convergence.validate),
        Figure('num_responses', num_responses.CLAIM, num_responses.compute,
               num_responses.plot, num_responses.validate),
        Figure('nash_vs_reward', nash_vs_reward.CLAIM, nash_vs_reward.compute,
               nash_vs_reward.plot, nash_vs_reward.validate),
        Figure('stability', stability.CLAIM, stability.compute,
               stability.plot, stability.validate),
        Figure('sampled', sampled.CLAIM, sampled.compute, sampled.plot,
               sampled.validate),
        Figure('language_model', language_model.CLAIM,
               language_model.compute, language_model.plot,
               language_model.validate),
    )
}


def missing_results(name: str, directory: str) -> str | None:
  """Why ``directory`` holds no finished result of figure ``name`` (None
  when it does)."""
  path = os.path.join(directory, RESULT_FILE)
  if not os.path.exists(path):
    return f'no finished result in {directory} (no {RESULT_FILE})'
  with open(path) as f:
    result = json.load(f)
  for output in result['outputs']:
    if not os.path.exists(os.path.join(directory, output)):
      return f'{os.path.join(directory, output)} is missing'
  return None


def compute(name: str, config: dict, directory: str, scale: str,
            log: Callable[[str], None] = print) -> dict:
  """Runs figure ``name`` into ``directory`` and writes ``result.json``
  last (an older one is removed first); returns what it wrote there."""
  figure = FIGURES[name]
  os.makedirs(directory, exist_ok=True)
  stale = os.path.join(directory, RESULT_FILE)
  if os.path.exists(stale):
    os.remove(stale)
  start = time.time()
  outputs = figure.compute(config, directory, log)
  result = {'figure': name, 'scale': scale, 'claim': figure.claim,
            'config': config, 'outputs': list(outputs),
            'compute_time_s': time.time() - start}
  io_lib.write_json(os.path.join(directory, RESULT_FILE), result)
  return result


def plot(name: str, directory: str) -> list[str]:
  """Draws figure ``name`` from the CSVs in ``directory``; returns the image
  paths."""
  FIGURES[name].plot(directory)
  return [os.path.join(directory, f'{name}.{ext}') for ext in ('png', 'pdf')]

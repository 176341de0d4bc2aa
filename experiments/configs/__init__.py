"""Configs of the figures of ``experiments.reproduce``, one file per figure.

``experiments/configs/<figure>.py`` defines ``get_config(scale)`` returning a
plain dict (JSON-serializable: it is saved in the figure's ``result.json``)
for each scale in :data:`SCALES`: ``default`` (the committed figures, a few
minutes on 2 CPU cores), ``full`` (more seeds and sizes) and ``test`` (a
seconds-long smoke run for tests/test_reproduce.py).
"""

from __future__ import annotations

import importlib

SCALES = ('default', 'full', 'test')


def get_config(figure: str, scale: str) -> dict:
  """The config of ``figure`` at ``scale``."""
  module = importlib.import_module(f'experiments.configs.{figure}')
  return module.get_config(scale)

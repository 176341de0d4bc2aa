"""Environments: what the sampled algorithms learn against (see core.py)."""

from nash_jax.environments.core import (
  Environment,
  TabularContexts,
  TokenContexts,
)

__all__ = ['Environment', 'TabularContexts', 'TokenContexts']

"""Experiment binaries of nash_jax (run with ``python -m experiments.NAME``)."""

import os

# The host-side reference solver (NumPy) otherwise competes with XLA's thread
# pool for the same cores and slows down by an order of magnitude.
os.environ.setdefault('OPENBLAS_NUM_THREADS', '1')

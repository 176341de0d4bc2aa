"""Test configuration: float64 everywhere, as the exact metrics need it."""

import os

# NumPy's multi-threaded BLAS fights XLA's thread pool for 2 cores and the
# reference solver slows down 50x after the first compiled call.
os.environ.setdefault('OPENBLAS_NUM_THREADS', '1')

import jax  # noqa: E402

jax.config.update('jax_enable_x64', True)

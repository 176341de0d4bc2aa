"""Test configuration: float64 everywhere, as the exact metrics need it,
rank promotion an error, and one persistent compilation cache for the whole
test run.

Rank promotion (``x + y`` with ``x`` of rank 1 and ``y`` of rank 2
broadcasting silently) raises in every test and fixture of this process, so
the library broadcasts explicitly (``[..., None]``); the binaries the tests
start are separate processes and keep JAX's default.

The cache: the binaries the tests start (and the tests themselves) compile
the same programs many times over (a resumed run recompiles what the
interrupted one compiled; every algorithm's runs share their step programs).
JAX's persistent cache keys an executable by the program's fingerprint, so a
cache hit is the same program and results are unchanged (the bit-identity
tests run with it). It lives in a temporary directory of this test run,
shared by the xdist workers and every subprocess (through the environment).
"""

import os
import tempfile

# NumPy's multi-threaded BLAS fights XLA's thread pool for 2 cores and the
# reference solver slows down 50x after the first compiled call.
os.environ.setdefault('OPENBLAS_NUM_THREADS', '1')

_RUN = os.environ.get('PYTEST_XDIST_TESTRUNUID') or f'pid{os.getpid()}'
_CACHE = os.path.join(tempfile.gettempdir(), 'nash_jax_test_cache', _RUN)
os.environ.setdefault('JAX_COMPILATION_CACHE_DIR', _CACHE)
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0')
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES', '0')

import jax  # noqa: E402

jax.config.update('jax_enable_x64', True)
jax.config.update('jax_numpy_rank_promotion', 'raise')
jax.config.update('jax_compilation_cache_dir',
                  os.environ['JAX_COMPILATION_CACHE_DIR'])
jax.config.update('jax_persistent_cache_min_compile_time_secs', 0)
jax.config.update('jax_persistent_cache_min_entry_size_bytes', 0)

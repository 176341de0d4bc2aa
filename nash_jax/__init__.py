"""nash_jax: Nash learning from human feedback in JAX.

Data flows one way (DESIGN.md): games -> update rules -> algorithms ->
trainer -> experiment binaries -> analysis.
"""

__version__ = '0.1.0'

"""Experiment binaries of nash_jax (run with ``python -m experiments.NAME``)."""

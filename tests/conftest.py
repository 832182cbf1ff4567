"""Test-wide settings. Imported before any test module, so thread limits apply to every import.

- BLAS threads: 1 (two cores; numpy/scipy/torch thread pools spin and oversubscribe them).
  XLA ignores OMP_NUM_THREADS; it is left to use both cores in the test process.
- JAX rank promotion raises: implicit broadcasting of mismatched ranks is a bug here.
- Markers: slow, browser, ray (registered in pyproject.toml; deselected by default, run by
  `make test-marked` and in CI).
- Warnings are errors: the short filter list lives in pyproject.toml with a reason per line.
"""

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("TQDM_DISABLE", "1")

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_numpy_rank_promotion", "raise")


@pytest.fixture
def rng_key():
    """A fixed JAX key: tests are reproducible."""
    return jax.random.key(20261125)

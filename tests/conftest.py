"""Shared test helpers. Tolerances are written at each call site, not here."""

from __future__ import annotations

import numpy as np
import pytest


def scaled_error(got, want) -> float:
    from honer.api import max_scaled_error

    return max_scaled_error(got if isinstance(got, list) else [got],
                            want if isinstance(want, list) else [want])


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)

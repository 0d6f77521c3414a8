"""Shared test helpers. Tolerances are written at each call site, not here."""

from __future__ import annotations

import numpy as np
import pytest


def scaled_error(got, want) -> float:
    from honer.api import max_scaled_error

    return max_scaled_error(got if isinstance(got, list) else [got],
                            want if isinstance(want, list) else [want])


def error_on_new_inputs(model, examples, compiled) -> float:
    """The compiled model's scaled error against PyTorch eager on fresh random inputs shaped
    like the (single) example input, beyond the build's own check on the examples."""
    import torch

    x = torch.randn_like(examples[0])
    with torch.no_grad():
        want = model(x).numpy()
    return scaled_error(compiled(x.numpy()), want)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)

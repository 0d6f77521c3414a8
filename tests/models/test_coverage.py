"""The coverage list: each zoo model compiles for the host and matches PyTorch eager.

Max abs error <= 1e-4 of the output's scale (max |eager output|), fp32, batch 1.
"""

import pytest

import honer
from honer.tests.models.zoo import ZOO


@pytest.mark.parametrize("name", sorted(ZOO))
def test_model_compiles_and_matches_eager(name):
    model, example_inputs = ZOO[name]()
    compiled = honer.compile(model, example_inputs)
    check = compiled.report["check"]
    assert check["reference"] == "pytorch-eager"
    assert check["max_scaled_error"] <= 1e-4, check
    # every kernel got a schedule rule: a fallback means TVM's scalar default loops
    assert compiled.report["build"]["schedule"]["fallbacks"] == []

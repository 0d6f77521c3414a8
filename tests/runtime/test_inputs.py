"""Runtime inputs: wrong count, shape, dtype or type are refused; layouts are converted."""

import numpy as np
import pytest
import torch
import torch.nn as nn

import honer
from honer.errors import InputError


class TwoInputs(nn.Module):
    def forward(self, a, b):
        return a * 2 + b.sum(-1, keepdim=True)


@pytest.fixture(scope="module")
def model():
    return honer.compile(TwoInputs(), (torch.randn(3, 4), torch.randn(3, 5)))


def test_positional_and_named_inputs(model):
    a, b = np.ones((3, 4), np.float32), np.ones((3, 5), np.float32)
    np.testing.assert_allclose(model(a, b), np.full((3, 4), 7.0))
    names = model.loaded.input_names
    np.testing.assert_allclose(model(**{names[0]: a, names[1]: b}), np.full((3, 4), 7.0))


def test_non_contiguous_arrays_are_copied_not_misread(model):
    a = np.arange(48, dtype=np.float32).reshape(3, 16)[:, ::4]  # a strided view
    assert not a.flags.c_contiguous
    b = np.zeros((3, 5), np.float32)
    np.testing.assert_allclose(model(a, b), np.ascontiguousarray(a) * 2)


@pytest.mark.parametrize("args,message", [
    ((np.ones((3, 4), np.float32),), "takes 2 input"),
    ((np.ones((3, 4), np.float64), np.ones((3, 5), np.float32)), "dtype float64"),
    ((np.ones((4, 3), np.float32), np.ones((3, 5), np.float32)), "shape \\[4, 3\\]"),
    (([[1.0] * 4] * 3, np.ones((3, 5), np.float32)), "numpy array"),
])
def test_bad_inputs_are_refused_with_a_message(model, args, message):
    with pytest.raises(InputError, match=message):
        model(*args)


def test_unknown_and_mixed_names_are_refused(model):
    with pytest.raises(InputError, match="unknown input"):
        model(nope=np.ones(1))
    with pytest.raises(InputError, match="either positionally or by name"):
        model(np.ones((3, 4), np.float32), b=np.ones((3, 5), np.float32))

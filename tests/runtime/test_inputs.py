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


def aligned(array: np.ndarray, offset: int = 0) -> np.ndarray:
    """A copy of `array` whose data starts `offset` bytes past a 64-byte boundary."""
    raw = np.empty(array.nbytes + 128, np.uint8)
    start = -raw.ctypes.data % 64 + offset
    view = raw[start:start + array.nbytes].view(array.dtype).reshape(array.shape)
    view[...] = array
    return view


@pytest.mark.parametrize("offset,writeable", [(0, True), (16, True), (0, False)])
def test_inputs_taken_in_place_or_copied_alike(model, offset, writeable):
    """Aligned, writeable arrays are wrapped without a copy; unaligned or read-only ones are
    copied: the outputs agree, and the caller's input is left as it was."""
    a = aligned(np.arange(12, dtype=np.float32).reshape(3, 4), offset)
    a.flags.writeable = writeable
    b = np.ones((3, 5), np.float32)
    np.testing.assert_allclose(model(a, b), np.arange(12).reshape(3, 4) * 2 + 5.0)
    np.testing.assert_array_equal(a, np.arange(12).reshape(3, 4))


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


class Embed(nn.Module):
    def __init__(self):
        super().__init__()
        self.table = nn.Embedding(50, 8)

    def forward(self, ids: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        # ids reach the gather unchanged (checked by the runtime); pos is shifted first
        return self.table(ids.reshape(2, 3)).sum(1) + self.table(pos + 1).sum(1)


def test_out_of_range_indices_are_refused_not_read_out_of_bounds():
    """Token ids past the embedding table used to segfault inside TVM's gather kernel."""
    torch.manual_seed(0)
    ids, pos = torch.tensor([[1, 2, 3, 4, 5, 6]]), torch.tensor([[0, 1, 2], [3, 4, 5]])
    compiled = honer.compile(Embed().eval(), (ids, pos))
    assert compiled.manifest["inputs"][0]["index_bound"] == 50
    assert "index_bound" not in compiled.manifest["inputs"][1]  # not the index itself
    with pytest.raises(InputError, match=r"\[-50, 50\).*1000000"):
        compiled(np.array([[1, 2, 3, 4, 5, 1_000_000]]), pos.numpy())
    # an index computed inside the model is clamped to the table instead of read past it
    out = compiled(ids.numpy(), np.full((2, 3), 10_000_000))
    assert np.isfinite(out).all()

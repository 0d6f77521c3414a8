"""Batch splitting: a model compiled for a micro-batch and run on the whole batch one micro-batch
after another, inside one compiled call.

Why: at batch 8 a layer's activations outgrow the cores' L2 (the ViT's FFN hidden state is
4.8 MB, the two cores hold 1 MB each), so every kernel reads what the last one wrote from L3.
Run a micro-batch at a time, they stay in L2; the weights are read once per micro-batch, from
L3 when the model's weights fit there. Measured on the 2-core Zen 4 host, ViT-DeiT-Tiny at
batch 8 in one call, in 30 turns beside ONNX Runtime: 110.6 ms whole, 107.2 in micro-batches of
4, 106.2 of 2 (ONNX Runtime 126.1). As separate calls of the smaller batch, MiniLM (seq 128)
went 123.7 -> 116.8 ms and ResNet-18 111.4 -> 107.8 with micro-batches of 2, but ResNet-18
111.4 -> 116.7 with 4. Whether it pays depends on the model and the machine: tuning measures
it (`TuneConfig.batch_split`), or the user asks for it (`compile(batch_split=m)`).

Exact when the model treats batch items independently (inference models do: no batch norm
statistics, no cross-sample attention); the reference runs on the example inputs whole and in
micro-batches, and their outputs are compared before anything is built
(api._micro_batch_graph).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..errors import InputError
from .graph import Graph


@dataclass(frozen=True)
class BatchSplit:
    """How the compiled `main` runs a micro-batch graph: `chunks` times, input k taken in
    slices along axis 0 where `split_inputs[k]`, else whole by every chunk; every output is
    the chunks' outputs concatenated along axis 0."""
    chunks: int
    split_inputs: tuple[bool, ...]

    def to_json(self) -> dict:
        return {"chunks": self.chunks, "split_inputs": list(self.split_inputs)}


def micro_batch_examples(examples: Sequence[np.ndarray], batch: int, micro: int
                         ) -> tuple[np.ndarray, ...]:
    """The first micro-batch of the example inputs: those with `batch` rows, cut to `micro`."""
    return tuple(x[:micro] if _batched(x, batch) else x for x in examples)


def batch_of(examples: Sequence[np.ndarray], micro: int) -> int:
    """The batch the split applies to: the first example input's leading dimension, which
    `micro` must divide into at least two chunks."""
    if not examples or not np.ndim(examples[0]):
        raise InputError("batch_split needs example inputs whose first one has a batch axis")
    batch = int(np.shape(examples[0])[0])
    if micro < 1 or micro >= batch or batch % micro:
        raise InputError(f"batch_split={micro} does not split the batch of {batch} into equal "
                         f"micro-batches; use a divisor of {batch} below it")
    return batch


def plan(full: Graph, micro: Graph, batch: int, micro_batch: int) -> BatchSplit:
    """The split that runs `micro` (captured at the micro-batch) in place of `full`: each input
    either keeps its shape or has `batch` rows against `micro_batch`; every output must have
    them, else the chunks' outputs would not add up to the batch's."""
    chunks = batch // micro_batch
    if len(full.inputs) != len(micro.inputs) or len(full.outputs) != len(micro.outputs):
        raise InputError("batch_split: the model captured at the micro-batch has other inputs "
                         "or outputs than at the whole batch")
    split = []
    for whole, part in zip(full.inputs, micro.inputs):
        if whole.shape == part.shape:
            split.append(False)
        elif _rows_of(whole.shape, part.shape, chunks):
            split.append(True)
        else:
            raise InputError(f"batch_split: input {whole.name} is {list(whole.shape)} for the "
                             f"batch and {list(part.shape)} for the micro-batch, not a split "
                             "along its first axis")
    for whole, part in zip(full.outputs, micro.outputs):
        if not _rows_of(whole.shape, part.shape, chunks):
            raise InputError(f"batch_split: output {whole.name} is {list(whole.shape)} for the "
                             f"batch and {list(part.shape)} for the micro-batch; only models "
                             "whose outputs have the batch as their first axis split")
    return BatchSplit(chunks, tuple(split))


def split_samples(samples: Sequence, split: BatchSplit) -> list[tuple]:
    """One input tuple of the whole batch (numpy arrays or torch tensors) as the split's
    micro-batch tuples."""
    def part(x, cut: bool, k: int):
        rows = len(x) // split.chunks
        return x[k * rows:(k + 1) * rows] if cut else x

    return [tuple(part(x, cut, k) for x, cut in zip(samples, split.split_inputs))
            for k in range(split.chunks)]


def joined_outputs(chunked: Sequence[Sequence[np.ndarray]], whole: Sequence[np.ndarray]
                   ) -> list[np.ndarray]:
    """The micro-batches' outputs concatenated along axis 0, to compare with the whole batch's
    (`whole`); raises where a shape differs."""
    joined = []
    for k, want in enumerate(whole):
        got = np.concatenate([np.asarray(outs[k]) for outs in chunked])
        if got.shape != np.shape(want):
            raise InputError(f"batch_split: output {k} is {list(np.shape(want))} for the whole "
                             f"batch but {list(got.shape)} from its micro-batches")
        joined.append(got)
    return joined


def _batched(x: np.ndarray, batch: int) -> bool:
    return bool(np.ndim(x)) and int(np.shape(x)[0]) == batch


def _rows_of(whole: tuple[int, ...], part: tuple[int, ...], chunks: int) -> bool:
    return len(whole) == len(part) >= 1 and whole[0] == part[0] * chunks \
        and whole[1:] == part[1:]

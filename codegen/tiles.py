"""Register-tile plumbing shared by the CPU schedule rules (cpu_schedule's float contractions,
int8_dot's integer ones, gemv's decoding products): the accumulator in a local buffer with the
epilogue on its write-back, and reductions split into a vectorized init and the update."""

from __future__ import annotations

from tvm import s_tir


def local_accumulator(sch: s_tir.Schedule, block):
    """Accumulates `block` in a local (register) buffer and pulls its elementwise consumers
    (bias, activation, residual add) into the block that writes the tile back, so they run
    on the tile while it is in registers; returns that write-back block."""
    acc = sch.cache_write(block, 0, "local")
    while True:
        consumers = sch.get_consumers(acc)
        if len(consumers) != 1 or not _same_domain(sch, acc, consumers[0]):
            break
        try:
            sch.reverse_compute_inline(consumers[0])
        except s_tir.ScheduleError:
            break
    return sch.get_consumers(block)[0]  # inlining replaced the write-back block


def vectorized_init(sch: s_tir.Schedule, block, loop):
    """Splits the reduction at `loop` into its init (innermost loop vectorized) and update.
    Vectorize, unroll and parallel must come first: afterwards the update block has no init
    and TIR no longer proves the loop nest's dataflow compact."""
    init = sch.decompose_reduction(block, loop)
    sch.vectorize(sch.get_loops(init)[-1])
    return init


def _same_domain(sch: s_tir.Schedule, producer, consumer) -> bool:
    """True when the consumer writes a buffer of the producer's output shape. A padded
    matmul's slicing copy writes a smaller one, and inlining it would write out of bounds."""
    def shape(block):
        writes = sch.get(block).writes
        return [tuple(int(d) for d in w.source.shape) for w in writes]

    return len(shape(consumer)) == 1 and shape(consumer) == shape(producer)

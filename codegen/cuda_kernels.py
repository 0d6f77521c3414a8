"""Hand-written CUDA kernels in place of TE kernels: the plumbing sparse_tc and int8_tc share.

A TE kernel's call (Relax `call_tir`) is replaced by a call of a TIR kernel with the same
parameters whose body launches threads and calls a CUDA device function; gpu.build_cuda puts
the device functions' source in front of the CUDA TVM generates before nvcc compiles it.
"""

from __future__ import annotations

from collections.abc import Callable

import tvm
from tvm import relax, tirx

WARP_TILE = 32  # rows and columns of the output a warp of the int8 kernel owns
MIN_BLOCKS = 2 * 132  # two blocks per SM on the largest built-for GPU (H100/H200: 132 SMs)


def warps_per_side(rows: int, cols: int) -> int:
    """The int8 kernel's block: 2 x 2 warps (which share operand fragments through L1) where
    that still gives every SM two blocks, else one warp (BERT's 128 tokens by 384 outputs make
    4 x 12 blocks of one warp, 2 x 6 of four)."""
    def blocks(side: int) -> int:
        return -(-rows // (side * WARP_TILE)) * -(-cols // (side * WARP_TILE))

    return 2 if blocks(2) >= MIN_BLOCKS else 1


# (builder, the TE kernel, its call's arguments) -> (kernel, arguments) to call instead, or
# None to keep the TE kernel; the builder can emit casts of the arguments
Replacement = Callable[[relax.BlockBuilder, tirx.PrimFunc, list[relax.Expr]],
                       tuple[tirx.PrimFunc, list[relax.Expr]] | None]


def replace_kernels(mod: tvm.IRModule, prefix: str, suffix: str,
                    replacement: Replacement) -> tvm.IRModule:
    """Every call of a TE kernel named `prefix`... that `replacement` takes -> its kernel,
    added as <the TE kernel's name><suffix>."""
    rewriter = _KernelReplacer(mod, prefix, suffix, replacement)
    main = rewriter.visit_expr(mod["main"])
    out = rewriter.builder_.get()
    out["main"] = main
    return relax.transform.DeadCodeElimination()(out)  # the replaced kernels


@relax.expr_functor.mutator
class _KernelReplacer(relax.PyExprMutator):
    def __init__(self, mod: tvm.IRModule, prefix: str, suffix: str,
                 replacement: Replacement) -> None:
        super().__init__(mod)
        self.mod, self.prefix, self.suffix = mod, prefix, suffix
        self.replacement = replacement

    def visit_call_(self, call: relax.Call) -> relax.Expr:
        call = super().visit_call_(call)
        if not (isinstance(call.op, tvm.ir.Op) and call.op.name == "relax.call_tir"
                and call.args[0].name_hint.startswith(self.prefix)):
            return call
        found = self.replacement(self.builder_, self.mod[call.args[0]],
                                 list(call.args[1].fields))
        if found is None:
            return call
        kernel, args = found
        gv = self.builder_.add_func(kernel, call.args[0].name_hint + self.suffix)
        return relax.Call(call.op, [gv, relax.Tuple(args)], call.attrs, call.ty_args)

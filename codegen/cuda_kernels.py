"""Hand-written CUDA kernels in place of TE kernels: the plumbing sparse_tc and int8_tc share.

A TE kernel's call (Relax `call_tir`) is replaced by a call of a TIR kernel with the same
parameters whose body launches threads and calls a CUDA device function; gpu.build_cuda puts
the device functions' source in front of the CUDA TVM generates before nvcc compiles it.
"""

from __future__ import annotations

from collections import Counter
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


def fold_bias_adds(mod: tvm.IRModule, bias_free: str,
                   with_bias: Callable[[tirx.PrimFunc], tirx.PrimFunc]) -> tvm.IRModule:
    """`add(k(...), b)`, or `add(reshape(k(...)), b)`, for a kernel k with the attribute
    `bias_free` and a float32 bias b of shape [N] -> `with_bias(k)` called with b as its last
    input: the bias is added in the kernel's epilogue instead of a second pass over its
    output."""
    uses = Counter()

    @relax.expr_functor.visitor
    class _Uses(relax.PyExprVisitor):
        def visit_var_(self, var: relax.Var) -> None:
            uses[var] += 1

        def visit_dataflow_var_(self, var: relax.DataflowVar) -> None:
            uses[var] += 1

    _Uses().visit_expr(mod["main"])
    folder = _BiasFolder(mod, bias_free, with_bias, uses)
    main = folder.visit_expr(mod["main"])
    out = folder.builder_.get()
    out["main"] = main
    return relax.transform.DeadCodeElimination()(out)


@relax.expr_functor.mutator
class _BiasFolder(relax.PyExprMutator):
    def __init__(self, mod: tvm.IRModule, bias_free: str,
                 with_bias: Callable[[tirx.PrimFunc], tirx.PrimFunc], uses: Counter) -> None:
        super().__init__(mod)
        self.mod, self.bias_free, self.with_bias, self.uses = mod, bias_free, with_bias, uses

    def visit_call_(self, call: relax.Call) -> relax.Expr:
        call = super().visit_call_(call)
        if not (is_op(call, "relax.add") and isinstance(call.args[0], relax.Var)):
            return call
        y, bias = call.args
        source, reshape = self._only_use(y), None
        if is_op(source, "relax.reshape") and isinstance(source.args[0], relax.Var):
            source, reshape = self._only_use(source.args[0]), source
        if not (is_op(source, "relax.call_tir")
                and self.mod[source.args[0]].attrs.get(self.bias_free, False)):
            return call
        out = source.ty_args[0]
        n = int(out.shape.values[1])
        bty = bias.ty
        if not (isinstance(bty, relax.TensorType) and str(bty.dtype) == "float32"
                and isinstance(bty.shape, relax.ShapeExpr)
                and [int(d) for d in bty.shape.values] == [n] and str(out.dtype) == "float32"):
            return call
        if reshape is not None and not _keeps_columns(reshape, call, n):
            return call
        kernel = self.with_bias(self.mod[source.args[0]])
        gv = self.builder_.add_func(kernel, source.args[0].name_hint + "_bias")
        args = [*source.args[1].fields, bias]
        folded = relax.Call(source.op, [gv, relax.Tuple(args)], source.attrs, source.ty_args)
        if reshape is None:
            return folded
        return relax.op.reshape(self.builder_.emit(folded), reshape.args[1])

    def _only_use(self, var: relax.Var) -> relax.Expr | None:
        """What `var` is bound to, where it is used once (the add about to absorb it)."""
        return self.lookup_binding(var) if self.uses[var] == 1 else None


def _keeps_columns(reshape: relax.Call, add: relax.Call, n: int) -> bool:
    """Whether the reshaped product still has the N columns last and the add broadcasts
    nothing onto it (so adding b to each row before the reshape is the same)."""
    shape, result = reshape.args[1], add.ty.shape
    if not (isinstance(shape, relax.ShapeExpr) and isinstance(result, relax.ShapeExpr)):
        return False
    dims = [int(d) for d in shape.values]
    return dims[-1] == n and dims == [int(d) for d in result.values]


def is_op(expr: relax.Expr | None, name: str) -> bool:
    """Whether `expr` is a call of the Relax operator `name` (e.g. "relax.add")."""
    return isinstance(expr, relax.Call) and isinstance(expr.op, tvm.ir.Op) \
        and expr.op.name == name

"""honer's error hierarchy: every failure a user can cause ends in one of these."""

from __future__ import annotations


class HonerError(Exception):
    """Base of every error honer raises on purpose."""


class UnsupportedOpError(HonerError):
    """One or more ops of the input model have no IR mapping; lists every one of them."""

    def __init__(self, frontend: str, problems: list[tuple[str, str]]):
        # problems: (op, where it came from), deduplicated by the caller's order
        self.frontend = frontend
        self.problems = problems
        lines = [f"  {op}  (at {where})" for op, where in problems]
        ops = sorted({op for op, _ in problems})
        super().__init__(
            f"{frontend}: {len(ops)} unsupported op(s): {', '.join(ops)}\n" + "\n".join(lines)
        )


class FrontendError(HonerError):
    """The input model cannot be captured (bad file, dynamic control flow, bad shapes)."""


class IRError(HonerError):
    """A graph violates the IR's invariants (raised by verify and by shape inference)."""


class PassError(HonerError):
    """A pass failed; names the pass."""

    def __init__(self, pass_name: str, message: str):
        self.pass_name = pass_name
        super().__init__(f"pass '{pass_name}': {message}")


class CodegenError(HonerError):
    """Lowering to TVM failed for a node; names the node and its scope."""


class ToolchainError(HonerError):
    """A tool a target needs is missing; says how to install it."""

    def __init__(self, tool: str, hint: str):
        self.tool = tool
        super().__init__(f"missing tool '{tool}': {hint}")


class BuildError(HonerError):
    """An external build step failed; carries the command, exit code and log path."""


class ArtifactError(HonerError):
    """An artifact is missing, malformed or tampered with."""


class InputError(HonerError):
    """Inputs handed to a compiled model do not match its signature."""

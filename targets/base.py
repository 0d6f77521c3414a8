"""What a target is: the TVM target, the toolchain it needs, how it builds and runs artifacts."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import HonerError, ToolchainError


@dataclass(frozen=True)
class Tool:
    name: str  # executable looked up on PATH
    hint: str  # how to install it

    def present(self) -> bool:
        return shutil.which(self.name) is not None


@dataclass
class BuildOutput:
    files: list[str]  # artifact-relative paths written by the build
    form: str  # how the runtime loads it (runtime/forms.py)
    manifest: dict[str, Any] = field(default_factory=dict)  # target facts for the manifest
    report: dict[str, Any] = field(default_factory=dict)  # build facts for the compile report
    weight_dtypes: dict[int, str] = field(default_factory=dict)  # weights the build narrowed


class Target:
    """Base class: subclasses set `name`, `description`, `tools` and implement the hooks."""

    name: str = ""
    description: str = ""
    tools: tuple[Tool, ...] = ()
    tunable: bool = False  # implements `tune`, timing kernels and models on this machine

    @classmethod
    def from_options(cls, options: dict[str, str]) -> Target:
        """A target from `name:key=value,...` options; most targets take none."""
        if options:
            raise HonerError(f"target '{cls.name}' takes no options, got {sorted(options)}")
        return cls()

    def tvm_target(self) -> dict[str, Any]:
        raise NotImplementedError

    def lower(self, graph: Any, split: Any = None) -> Any:
        """The graph in the form `build` takes: a Relax module for TVM-based targets. `split`
        (an ir.batch_split.BatchSplit): `graph` is a micro-batch's, run once per micro-batch."""
        from ..codegen.relax_lower import lower

        return lower(graph, split=split)

    def missing_tools(self) -> list[Tool]:
        return [t for t in self.tools if not t.present()]

    def check_toolchain(self) -> None:
        missing = self.missing_tools()
        if missing:
            raise ToolchainError(missing[0].name, missing[0].hint)

    def build(self, lowered: Any, out_dir: Path, workdir: Path,
              tuning: Any = None) -> BuildOutput:
        """`tuning` (a codegen.tuning.TuneConfig) names the database to take schedules from."""
        raise NotImplementedError

    def tune(self, lowered: Any, cfg: Any, progress: Callable[[str], None]) -> dict[str, Any]:
        raise HonerError(f"target '{self.name}' has no tuner; compile without tune=")

    def can_run_here(self) -> bool:
        return True


# LLVM's floating-point freedoms for CPU kernels: reassociation lets it vectorize the row
# reductions the schedule leaves as plain loops (softmax's max and sum, a layer norm's mean and
# variance: 1.7-1.8x faster on a ViT's rows), arcp turns softmax's division by the row sum
# into one reciprocal, contract fuses multiply-adds. Sums change in their last bits only. No
# nnan/ninf: masked attention scores are -inf and must stay so.
FLOAT_FREEDOMS = {"fast-math-reassoc": True, "fast-math-arcp": True, "fast-math-nsz": True,
                  "fast-math-contract": True}


class CPUTarget(Target):
    """A CPU target scheduled by honer's CPU rules: `schedule()` gives the vector width."""

    def schedule(self) -> Any:
        raise NotImplementedError

    def lower(self, graph: Any, split: Any = None) -> Any:
        from ..codegen.relax_lower import lower

        # linear weights in panels of two vectors of output columns (the register tile's width)
        return lower(graph, panel=2 * self.schedule().lanes, split=split)

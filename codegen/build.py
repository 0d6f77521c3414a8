"""The one place that drives TVM's Relax build and library export."""

from __future__ import annotations

import contextlib
import io
import os
from pathlib import Path
from typing import Any

import tvm
from tvm import relax

from ..errors import BuildError
from .relax_lower import LoweredModule


def tvm_version() -> str:
    return str(tvm.__version__)


def build_relax(lowered: LoweredModule, tvm_target: dict[str, Any]) -> relax.VMExecutable:
    """Compiles the Relax module with TVM's default pipeline for the target."""
    target = tvm.target.Target(tvm_target)
    try:
        with target:
            return relax.build(lowered.mod, target=target)
    except Exception as e:  # a TVM failure here is a honer bug or an unsupported shape
        raise BuildError(f"TVM build for {tvm_target} failed: {_last_line(e)}") from e


def export_library(executable: relax.VMExecutable, path: Path, workdir: Path) -> None:
    """Links the executable into one shared library at `path` (via the system C++ compiler)."""
    log = io.StringIO()
    try:
        with contextlib.redirect_stdout(log):
            executable.export_library(os.fspath(path), workspace_dir=os.fspath(workdir))
    except Exception as e:
        raise BuildError(f"linking {path.name} failed: {_last_line(e)}") from e


def _last_line(e: Exception) -> str:
    text = str(e).strip()
    return text.splitlines()[-1] if text else type(e).__name__

"""FPGA high-level synthesis: a Vitis-HLS-style C++ project from the IR, verified by C
simulation (g++), with honer's own resource and latency estimates. No vendor tool runs here;
the project carries the vendor script for users who have one."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

from ..codegen.hls import HLSConfig, HLSModule, csim_command, generate, summary
from ..errors import BuildError, HonerError
from ..ir import Graph
from .base import BuildOutput, Target, Tool

PROJECT = "hls"
CSIM = "csim"
OPTIONS = {"number", "rounding", "overflow", "interface", "reuse", "clock_mhz", "part"}


class FpgaHlsTarget(Target):
    name = "fpga-hls"
    description = ("FPGA HLS C++ project (Vitis HLS style) run by C simulation with g++; "
                   "options number=float|fixed<W,I>, rounding=trn|rnd, overflow=wrap|sat, "
                   "interface=axis|m_axi, reuse=R")
    tools = (Tool("g++", "install the system C++ compiler: apt-get install g++"),)

    def __init__(self, config: HLSConfig | None = None):
        self.config = config or HLSConfig()  # HLSConfig refuses bad options itself

    @classmethod
    def from_options(cls, options: dict[str, str]) -> FpgaHlsTarget:
        unknown = set(options) - OPTIONS
        if unknown:
            raise HonerError(f"target fpga-hls: unknown option(s) {sorted(unknown)}; it takes "
                             f"{sorted(OPTIONS)}")
        kwargs: dict[str, Any] = dict(options)
        try:
            if "reuse" in kwargs:
                kwargs["reuse"] = int(kwargs["reuse"])
            if "clock_mhz" in kwargs:
                kwargs["clock_mhz"] = float(kwargs["clock_mhz"])
        except ValueError as e:
            raise HonerError(f"target fpga-hls: {e}") from None
        return cls(HLSConfig(**kwargs))

    def tvm_target(self) -> dict[str, Any]:
        return {"kind": "hls-c++", "part": self.config.part}  # no TVM target: honer's codegen

    def lower(self, graph: Graph, split: Any = None) -> HLSModule:
        if split is not None:
            raise HonerError("target fpga-hls streams one sample at a time; compile without "
                             "batch_split=")
        return HLSModule(graph, self.config)

    def build(self, lowered: HLSModule, out_dir: Path, workdir: Path,
              tuning: Any = None) -> BuildOutput:
        if tuning is not None:
            raise HonerError("target fpga-hls has no tuner; compile without tune=")
        project = out_dir / PROJECT
        estimates = generate(lowered.graph, self.config, project)
        cmd = csim_command(project, out_dir / CSIM)
        proc = subprocess.run(cmd, capture_output=True, text=True)
        log = workdir / "csim_build.log"
        log.write_text(proc.stdout + proc.stderr)
        if proc.returncode != 0 or proc.stderr.strip():  # -Wall warnings count as failures
            raise BuildError(f"C simulation build {'failed' if proc.returncode else 'warned'} "
                             f"(exit {proc.returncode}): {' '.join(cmd)}\nsee {log}:\n"
                             + "\n".join(proc.stderr.strip().splitlines()[-15:]))
        files = sorted(str(p.relative_to(out_dir)) for p in project.rglob("*") if p.is_file())
        return BuildOutput(files=files + [CSIM], form="hls-csim",
                           manifest={"executable": CSIM, "project": PROJECT},
                           report={"hls": summary(estimates, self.config)})

    def can_run_here(self) -> bool:
        return shutil.which("g++") is not None

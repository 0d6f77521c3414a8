"""Target registry: an explicit dict from the name users type to the target class."""

from __future__ import annotations

import re

from ..errors import HonerError
from .arm import ArmTarget
from .base import Target
from .cuda import CudaTarget
from .fpga_hls import FpgaHlsTarget
from .host import HostTarget
from .wasm import WasmTarget

TARGETS: dict[str, type[Target]] = {
    "host": HostTarget,
    "arm": ArmTarget,
    "cuda": CudaTarget,
    "fpga-hls": FpgaHlsTarget,
    "wasm": WasmTarget,
}


def get_target(spec: str | Target) -> Target:
    """`spec` is a target name with optional options: "cuda:arch=sm_90,precision=fp16"."""
    if isinstance(spec, Target):
        return spec
    name, _, rest = spec.partition(":")
    if name not in TARGETS:
        raise HonerError(f"unknown target '{name}'; known targets: {', '.join(TARGETS)}")
    options = {}
    for item in filter(None, re.split(r",(?![^<]*>)", rest)):  # fixed<16,6> stays whole
        key, sep, value = item.partition("=")
        if not sep or not key or not value:
            raise HonerError(f"target '{spec}': options are key=value pairs separated by "
                             f"commas, got {item!r}")
        options[key.strip()] = value.strip()
    return TARGETS[name].from_options(options)


__all__ = ["TARGETS", "Target", "get_target"]

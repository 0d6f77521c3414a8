"""Shared memory a CUDA block may have once it opts in, per architecture (CUDA C++
programming guide, "Technical Specifications per Compute Capability"). The build checks its
kernels against the architectures it targets; the loader checks a GPU against the artifact,
because machine code for sm_80 also runs on sm_86 and sm_89 GPUs, which give a block less."""

from __future__ import annotations

_KB = 1024
DYNAMIC_SHARED_BYTES = {"sm_80": 163 * _KB, "sm_86": 99 * _KB, "sm_87": 163 * _KB,
                        "sm_89": 99 * _KB, "sm_90": 227 * _KB}
UNKNOWN_ARCH_BYTES = 99 * _KB  # the least any sm_80-or-later GPU gives


def dynamic_shared_bytes(arch: str) -> int:
    """The most shared memory a block may have on `arch` (sm_XY)."""
    return DYNAMIC_SHARED_BYTES.get(arch, UNKNOWN_ARCH_BYTES)

"""This CPU's vector features, for refusing kernels built for features it lacks (no numpy,
standard library only: the runtime must not need the compiler)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import ArtifactError

# the x86 features honer's CPU kernels may be built to use, in LLVM's names
X86_FEATURES = ("avx", "avx2", "fma", "avx512f", "avx512bw", "avx512vnni")


def cpu_flags() -> list[str] | None:
    """X86_FEATURES this CPU has, from /proc/cpuinfo (Linux names some with an underscore:
    avx512_vnni); None where that cannot be read."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("flags"):
            flags = set(line.partition(":")[2].split())
            return [f for f in X86_FEATURES
                    if f in flags or f.replace("avx512", "avx512_") in flags]
    return None


def check_cpu_features(path: Path, manifest: dict[str, Any]) -> None:
    need = manifest["target"].get("cpu_features") or []
    have = cpu_flags()
    missing = sorted(set(need) - set(have)) if have is not None else []
    if missing:
        raise ArtifactError(f"{path}: built for a CPU with {', '.join(missing)}, which this CPU "
                            "lacks (its kernels would stop on an illegal instruction); rebuild "
                            "it here (target 'host') or for this CPU (target 'host:mcpu=...')")

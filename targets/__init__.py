"""Target registry: an explicit dict from the name users type to the target class."""

from __future__ import annotations

from ..errors import HonerError
from .base import Target
from .host import HostTarget

TARGETS: dict[str, type[Target]] = {
    "host": HostTarget,
}


def get_target(name: str | Target) -> Target:
    if isinstance(name, Target):
        return name
    try:
        return TARGETS[name]()
    except KeyError:
        raise HonerError(f"unknown target '{name}'; known targets: {', '.join(TARGETS)}") from None


__all__ = ["TARGETS", "Target", "get_target"]

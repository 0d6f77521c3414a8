"""The pass interface shared by every pass (see DESIGN.md, "Passes")."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..ir import Graph


@dataclass
class Calibration:
    """User data for calibrating approximate passes: a list of input tuples."""

    samples: list[tuple[np.ndarray, ...]]


@dataclass
class PassReport:
    name: str
    config: dict[str, Any]
    matches: int = 0
    rejections: list[dict[str, str]] = field(default_factory=list)  # {"where", "reason"}
    effect: dict[str, Any] = field(default_factory=dict)
    exact: bool = True

    def reject(self, where: str, reason: str) -> None:
        self.rejections.append({"where": where, "reason": reason})

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "config": self.config, "matches": self.matches,
                "rejections": self.rejections, "effect": self.effect, "exact": self.exact}


@dataclass
class PassResult:
    graph: Graph
    changed: bool
    report: PassReport

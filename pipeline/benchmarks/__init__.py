"""Benchmarks, one module per area; each exposes `run() -> list[Row]`.

A row pairs a measured figure with a baseline measured in the same run, so the ratio is
meaningful on whatever machine runs `make bench`.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Row:
    """One benchmark line: `measured` vs `baseline` in the same `unit`.

    `higher_is_better` tells how to read the ratio (throughput vs time); `target` states the
    DESIGN.md goal in words.
    """
    name: str
    measured: float
    baseline: float | None
    unit: str
    baseline_name: str = ""
    higher_is_better: bool = False
    target: str = ""

    @property
    def speedup(self) -> float | None:
        if not self.baseline or not self.measured:
            return None
        return self.measured / self.baseline if self.higher_is_better else self.baseline / self.measured

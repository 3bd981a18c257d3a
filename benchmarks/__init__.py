"""`make bench`: every benchmark of DESIGN.md ("Performance targets") in one table; one module
per area, each exposing `run() -> list[Row]`. A top-level package of the repository, not
installed with `pipeline`.

    python -m benchmarks [--only trials,aggregate,...]

A row pairs a measured figure with a baseline measured in the same run, so the ratio is
meaningful on whatever machine runs `make bench`.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import traceback
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


AREAS = ["trials", "aggregate", "rsa", "driver", "behave", "distributed", "openai", "sentences"]


def format_table(rows: list[Row]) -> str:
    head = f"{'benchmark':<44} {'measured':>12} {'baseline':>12} {'unit':<10} {'speedup':>8}  baseline / target"
    lines = [head, "-" * len(head)]
    for r in rows:
        base = f"{r.baseline:12.3f}" if r.baseline is not None else f"{'-':>12}"
        sp = f"{r.speedup:7.2f}x" if r.speedup is not None else f"{'-':>8}"
        note = "; ".join(x for x in (r.baseline_name, r.target) if x)
        lines.append(f"{r.name:<44} {r.measured:12.3f} {base} {r.unit:<10} {sp}  {note}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks")
    p.add_argument("--only", default=",".join(AREAS), help=f"comma-separated subset of {AREAS}")
    args = p.parse_args(argv)
    rows: list[Row] = []
    failed = []
    for area in args.only.split(","):
        print(f">> benchmark: {area}", flush=True)
        try:
            rows += importlib.import_module(f"{__name__}.{area}").run()
        except Exception:
            traceback.print_exc()
            failed.append(area)
    print()
    print(format_table(rows))
    if failed:
        print(f"\nfailed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0

"""`make demo`: the whole DAG on one config, with per-stage wall times and the headline.

Every stage skips finished work, so a second run does no model work and an interrupted
run continues where it stopped.

    python -m pipeline.demo --config configs/demo.toml [--set vocab.size=200]
"""

from __future__ import annotations

import argparse
import logging
import sys
import time

from .cli import DAG, run_stage
from .config import load_config
from .errors import PipelineError
from .manifest import Manifest
from .options import Options
from .paths import report_file


def _fmt_seconds(s: float) -> str:
    return f"{s:6.1f} s" if s < 120 else f"{s / 60:6.1f} min"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m pipeline.demo")
    p.add_argument("--config", default="configs/demo.toml")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    opts = Options()
    timings: dict[str, float] = {}
    try:
        cfg = load_config(args.config, args.overrides)
        print(f">> demo: experiment '{cfg.experiment.name}' -> {cfg.run_dir}", flush=True)
        t_all = time.perf_counter()
        for name in DAG:
            print(f"\n>> stage {name}", flush=True)
            t0 = time.perf_counter()
            run_stage(name, cfg, opts)
            timings[name] = time.perf_counter() - t0
        total = time.perf_counter() - t_all
    except PipelineError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted: finished work is kept; run `make demo` again to continue", file=sys.stderr)
        return 130
    Manifest(cfg.run_dir).append("demo_timings", {k: round(v, 2) for k, v in timings.items()})
    print("\n>> stage wall times")
    for name, secs in timings.items():
        print(f"   {name:<10} {_fmt_seconds(secs)}")
    print(f"   {'total':<10} {_fmt_seconds(total)}")
    from .report import headline
    print(f"\n>> report: {report_file(cfg)} (figures beside it)")
    print(">> headline")
    for key, value in headline(cfg).items():
        print(f"   {key:<32} {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

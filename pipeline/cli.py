"""Command line: `python -m pipeline STAGE --config FILE`.

Stages are looked up by name in `STAGES`; each stage module exposes `run(cfg, opts)`.
Modules are imported only when their stage runs, so `trials` works without torch or vLLM.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
import time

from .config import load_config
from .errors import PipelineError

STAGES: dict[str, str] = {
    "vocab": "Copy the configured vocabulary slice to data/<experiment>/vocab.txt (and build vocab lists).",
    "trials": "Build the FC and FA trial plans (pure function of vocabulary and seeds).",
    "behave": "Run trials through the LLM backend into resumable Parquet trial logs.",
    "aggregate": "Count matrices, PPMI and cosine similarity from the trial logs.",
    "hidden": "Layerwise hidden-state vectors per model and extraction strategy.",
    "baselines": "Static word vectors, encoder (BERT-family) vectors, cross-model consensus.",
    "rsa": "RSA and NN@k overlap of hidden layers against every reference.",
    "regress": "Held-out-words ridge regression of hidden similarity on references.",
    "report": "Figures (PNG) and report.md.",
    "export": "Analysis-ready exports of the similarity matrices.",
}
DAG = ["vocab", "trials", "behave", "aggregate", "hidden", "baselines", "rsa", "regress", "report"]

log = logging.getLogger("pipeline")


def _shard(text: str) -> tuple[int, int]:
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--shard {text!r}: use I/N with 0 <= I < N, e.g. 0/4") from None
    if not 0 <= i < n:
        raise argparse.ArgumentTypeError(f"--shard {text!r}: need 0 <= I < N, e.g. 0/4")
    return i, n


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m pipeline",
        description="Behavioral vs hidden-state semantic geometry of LLMs.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="stages:\n" + "\n".join(f"  {k:<10} {v}" for k, v in STAGES.items())
        + "\n  all        Run the whole DAG: " + " -> ".join(DAG),
    )
    p.add_argument("stage", choices=[*STAGES, "all"], metavar="STAGE", help="stage to run (see below)")
    p.add_argument("--config", required=True, help="experiment TOML, e.g. configs/demo.toml")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set vocab.size=200 (repeatable)")
    p.add_argument("--model", help="only this model (default: every model in the config)")
    p.add_argument("--paradigm", choices=["fc", "fa"], help="only this paradigm (behave, aggregate)")
    p.add_argument("--strategy", help="only this hidden-state strategy")
    p.add_argument("--shard", type=_shard, default=(0, 1), metavar="I/N",
                   help="behave: run only shard I of N (deterministic split of trial_ids)")
    p.add_argument("--engine", choices=["local", "ray"], default="local",
                   help="behave/hidden: run in this process or on a Ray cluster")
    p.add_argument("--address", default=None, help="Ray cluster address (default: start Ray locally)")
    p.add_argument("--workers", type=int, default=None, metavar="N",
                   help="--engine ray: actors (engines) per model (default: as many as the cluster's "
                        "GPUs fit, or one per CPU)")
    p.add_argument("--limit", type=int, default=None, help="behave: run at most this many trials (smoke tests)")
    p.add_argument("--force", action="store_true",
                   help="recompute a stage whose inputs changed instead of refusing")
    p.add_argument("-v", "--verbose", action="store_true")
    return p


def run_stage(name: str, cfg, opts) -> None:
    """Import `pipeline.<name>` and call its `run(cfg, opts)`."""
    module = importlib.import_module(f"pipeline.{name}")
    t0 = time.perf_counter()
    module.run(cfg, opts)
    log.info("stage %s finished in %.1f s", name, time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> int:
    opts = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if opts.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    for noisy in ("httpx", "urllib3", "filelock"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        cfg = load_config(opts.config, opts.overrides)
        stages = DAG if opts.stage == "all" else [opts.stage]
        for name in stages:
            run_stage(name, cfg, opts)
    except PipelineError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: finished work is kept; run the same command again to continue", file=sys.stderr)
        return 130
    return 0

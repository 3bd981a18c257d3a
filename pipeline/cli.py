"""Command line: `python -m pipeline STAGE --config FILE`, every stage option in one parser.

Stages are looked up by name in `STAGES`; each stage module exposes `run(cfg, opts)` and
runs in this process. The command line becomes one `options.Options` here, once, and every
stage gets that object. ``--engine ray`` hands the stages that fan out (`ENGINES`) to the Ray
drivers in `distributed` instead, so no stage knows which engine runs it. Modules are
imported only when their stage runs, so `trials` works without torch or vLLM.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import logging
import sys
import time

from .config import PARADIGMS, load_config
from .errors import PipelineError
from .manifest import unwritable
from .options import Options
from .upstream import check as check_upstream

STAGES: dict[str, str] = {
    "vocab": "Copy the configured vocabulary slice to data/<experiment>/vocab.txt (and build vocab lists).",
    "trials": "Build the FC and FA trial plans (pure function of vocabulary and seeds).",
    "released": "Import the authors' released FC/FA trials ([[released]]) as the trial logs of behavior-only models.",
    "behave": "Run trials through the LLM backend into resumable Parquet trial logs.",
    "aggregate": "Count matrices, PPMI and cosine similarity from the trial logs.",
    "sentences": "Corpus sentences per word for the averaged strategy (hidden.harvest -> hidden.sentences).",
    "hidden": "Layerwise hidden-state vectors per model and extraction strategy.",
    "baselines": "Static word vectors, encoder (BERT-family) vectors, cross-model consensus.",
    "rsa": "RSA and NN@k overlap of hidden layers against every reference.",
    "validity": "Position bias, hidden-norm and rogue-dimension diagnostics, reliability ceiling and planner.",
    "regress": "Held-out-words ridge regression of hidden similarity on references.",
    "report": "Figures (PNG) and report.md.",
    "export": "Analysis-ready exports of the similarity matrices.",
    "plan-trials": "Print the reliability planner: trials per cue (and GPU-hours) that reach the target r_SB.",
}
DAG = ["vocab", "trials", "released", "behave", "aggregate", "sentences", "hidden", "baselines", "rsa", "validity",
       "regress", "report"]
COMMANDS = {"plan-trials": "pipeline.validity:plan_trials"}
ENGINES = {"ray": {"behave": "pipeline.distributed.behave:run", "hidden": "pipeline.distributed.hidden:run",
                   "sentences": "pipeline.distributed.sentences:run"}}

log = logging.getLogger("pipeline")
_MAX_SHARDS = 2**31 - 1


def _shard(text: str) -> tuple[int, int]:
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--shard {text!r}: use I/N with 0 <= I < N, e.g. 0/4") from None
    if not 0 <= i < n:
        raise argparse.ArgumentTypeError(f"--shard {text!r}: need 0 <= I < N, e.g. 0/4")
    if n > _MAX_SHARDS:
        raise argparse.ArgumentTypeError(f"--shard {text!r}: N is at most {_MAX_SHARDS} (one trial per shard is "
                                         f"already the finest split), e.g. 0/4")
    return i, n


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of trials, e.g. --limit 1000") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value}: give at least 1 trial, e.g. --limit 1000 (leave --limit out "
                                         f"to run everything)")
    return value


class _Parser(argparse.ArgumentParser):
    """Bad command lines end in one line naming the problem (argparse adds a usage block)."""

    def error(self, message: str):
        self.exit(2, f"error: {message} (see `{self.prog} --help`)\n")


def _layers(text: str) -> list[int]:
    try:
        layers = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give layer numbers separated by commas, e.g. 1,16,32") from None
    if not layers or min(layers) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: layers are numbered from 1 (layer 0, the embeddings, is not "
                                         f"analysed)")
    return layers


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
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
    p.add_argument("--paradigm", choices=list(PARADIGMS), help="only this paradigm (behave, aggregate)")
    p.add_argument("--strategy", help="only this hidden-state strategy")
    p.add_argument("--shard", type=_shard, default=(0, 1), metavar="I/N",
                   help="behave: run only shard I of N (deterministic split of trial_ids)")
    p.add_argument("--engine", choices=["local", *ENGINES], default="local",
                   help="behave/hidden/sentences: run on this machine or on a Ray cluster")
    p.add_argument("--address", default=None, help="Ray cluster address (default: start Ray locally)")
    p.add_argument("--workers", type=int, default=None, metavar="N",
                   help="--engine ray: actors (engines) per model (default: as many as the cluster's "
                        "GPUs fit, or one per CPU); sentences: corpus files scanned at once (default: one per CPU)")
    p.add_argument("--limit", type=_positive, default=None, metavar="N",
                   help="behave: run at most N trials per model and paradigm (smoke tests)")
    p.add_argument("--force", action="store_true",
                   help="recompute a stage whose settings changed instead of refusing")
    p.add_argument("--hidden", action="store_true", help="export: also export hidden-layer centered cosines")
    p.add_argument("--layers", type=_layers, default=None, metavar="L,L,...",
                   help="export --hidden: only these layers, e.g. 1,16,32 (default: all)")
    p.add_argument("-v", "--verbose", action="store_true")
    return p


def run_stage(name: str, cfg, opts: Options) -> None:
    """Run stage `name`: `pipeline.<name>.run(cfg, opts)`, or its driver for ``--engine``."""
    target = ENGINES.get(opts.engine, {}).get(name, COMMANDS.get(name, f"pipeline.{name}:run"))
    module, func = target.split(":")
    check_upstream(cfg, name, opts)
    t0 = time.perf_counter()
    getattr(importlib.import_module(module), func)(cfg, opts)
    log.info("stage %s finished in %.1f s", name, time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:
        return int(e.code or 0)
    opts = Options.of(args)
    logging.basicConfig(level=logging.DEBUG if opts.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    for noisy in ("httpx", "urllib3", "filelock"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        cfg = load_config(args.config, args.overrides)
        check_run_dir(cfg)
        stages = DAG if args.stage == "all" else [args.stage]
        for name in stages:
            run_stage(name, cfg, opts)
    except PipelineError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: finished work is kept; run the same command again to continue", file=sys.stderr)
        return 130
    except OSError as e:
        if opts.verbose:
            raise
        print(f"error: {os_error_message(e)}", file=sys.stderr)
        return 2
    return 0


_WRITE_ERRNOS = {errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOTDIR, errno.ENOSPC, errno.EDQUOT, errno.EEXIST}


def os_error_message(e: OSError) -> str:
    """One line for an operating-system error that escaped a stage (no traceback)."""
    where = f"{e.filename}: " if e.filename else ""
    text = f"{where}{e.strerror or e}"
    if e.errno in _WRITE_ERRNOS:
        return (f"{text}; the run directory and its files must be writable: set experiment.data_dir (or --set "
                f"experiment.data_dir=DIR) to a writable directory, free disk space, or copy the experiment there")
    return f"{text} (run with -v for the traceback)"


def check_run_dir(cfg) -> None:
    """The experiment directory exists as a directory, or can be created.

    An existing read-only one is accepted: stages whose work is finished only read, and a
    stage that must write says so when it tries.
    """
    run_dir = cfg.run_dir
    for parent in [run_dir, *run_dir.parents]:
        if parent.exists() and not parent.is_dir():
            raise PipelineError(f"{parent} is a file, so experiment.data_dir / experiment.name ({run_dir}) cannot be "
                                f"a directory under it; set experiment.data_dir (or --set experiment.data_dir=DIR) "
                                f"to a directory")
        if parent.exists():
            break
    if not run_dir.exists():
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise unwritable(run_dir, e) from None

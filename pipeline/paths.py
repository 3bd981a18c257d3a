"""Where each stage writes under `data/<experiment>/`: one place, so a stage reads exactly
where the previous one wrote."""

from __future__ import annotations

from pathlib import Path

from .config import Config


def vocab_file(cfg: Config) -> Path:
    return cfg.run_dir / "vocab.txt"


def trials_file(cfg: Config, paradigm: str) -> Path:
    return cfg.run_dir / "trials" / f"{paradigm}.parquet"


def behavior_dir(cfg: Config, model: str, paradigm: str) -> Path:
    return cfg.run_dir / "behavior" / model / paradigm


def matrices_dir(cfg: Config, model: str, paradigm: str) -> Path:
    return cfg.run_dir / "matrices" / model / paradigm


def hidden_file(cfg: Config, model: str, strategy: str) -> Path:
    return cfg.run_dir / "hidden" / model / f"{strategy}.npy"


def baselines_dir(cfg: Config) -> Path:
    return cfg.run_dir / "baselines"


def results_dir(cfg: Config) -> Path:
    return cfg.run_dir / "results"


def report_dir(cfg: Config) -> Path:
    return cfg.run_dir / "report"


def export_dir(cfg: Config) -> Path:
    return cfg.run_dir / "export"

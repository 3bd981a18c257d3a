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


def norms_dir(cfg: Config, name: str) -> Path:
    """Human association norms `name` restricted to the vocabulary (`norms`), laid out as a
    behavioral matrix directory."""
    return cfg.run_dir / "norms" / name


def norms_file(cfg: Config, name: str, kind: str = "sim_ppmi") -> Path:
    """One file of `norms_dir` (kinds as in `matrix_file`)."""
    return norms_dir(cfg, name) / _matrix_name(kind)


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


def matrix_file(cfg: Config, model: str, paradigm: str, kind: str = "sim_ppmi") -> Path:
    """One aggregated file: ``sim_ppmi``, ``sim_counts`` (.npy), or ``counts``, ``ppmi`` (.npz)."""
    return matrices_dir(cfg, model, paradigm) / _matrix_name(kind)


def _matrix_name(kind: str) -> str:
    return f"{kind}.npz" if kind in ("counts", "ppmi") else f"{kind}.npy"


def static_file(cfg: Config) -> Path:
    return baselines_dir(cfg) / f"{cfg.baselines.static_name}.npy"


def encoder_file(cfg: Config) -> Path:
    return baselines_dir(cfg) / f"{cfg.baselines.encoder_name}.npy"


def consensus_file(cfg: Config, model: str, strategy: str) -> Path:
    return baselines_dir(cfg) / "consensus" / model / f"{strategy}.npy"


def consensus_sums_dir(cfg: Config, strategy: str) -> Path:
    """Cached per-model layer sums of the consensus (`baselines`)."""
    return baselines_dir(cfg) / "consensus" / ".sums" / strategy


def sidecar(path: Path) -> Path:
    """The JSON summary written beside an array (`hidden`, `baselines`)."""
    return path.with_suffix(".json")


def result_table(cfg: Config, name: str) -> Path:
    """``rsa``, ``nn``, ``reliability``, ``behavior_norms`` or ``regression`` under `results/`."""
    return results_dir(cfg) / f"{name}.parquet"


def result_part(cfg: Config, table: str, model: str, strategy: str | None = None) -> Path:
    """One finished cell of a result table (`results/parts/<table>/<model>/<strategy>.parquet`;
    reliability parts are per model)."""
    base = results_dir(cfg) / "parts" / table
    return base / f"{model}.parquet" if strategy is None else base / model / f"{strategy}.parquet"


def report_file(cfg: Config, name: str = "report.md") -> Path:
    return report_dir(cfg) / name

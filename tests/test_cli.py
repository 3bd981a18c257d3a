"""The command line on hostile input: every case ends in one line naming the problem and the
fix (exit 2, no traceback), and nothing already written is lost."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import WORDS

from pipeline import cli

ROOT = Path(__file__).resolve().parents[1]


def _config(tmp_path: Path, data_dir: Path | str, extra: str = "", model: str = "unused") -> Path:
    words = tmp_path / "words.txt"
    words.write_text("\n".join(WORDS) + "\n")
    path = tmp_path / "c.toml"
    path.write_text(f"""
[experiment]
name = "x"
data_dir = "{data_dir}"
[vocab]
source = "{words}"
size = 20
[trials]
fa_runs = 2
[behave]
backend = "fake"
chunk_size = 16
[[models]]
name = "m"
path = "{model}"
{extra}
""")
    return path


def _one_line_error(capsys, argv, rc=2) -> str:
    assert cli.main(argv) == rc
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ")
    return lines[0]


def test_config_is_a_directory_or_binary(tmp_path, capsys):
    assert "is a directory, not a config file" in _one_line_error(capsys, ["vocab", "--config", str(tmp_path)])
    binary = tmp_path / "b.toml"
    binary.write_bytes(bytes(range(256)) * 4)
    assert "not a text file" in _one_line_error(capsys, ["vocab", "--config", str(binary)])


@pytest.mark.parametrize("value, text", [("-5", "give at least 1 trial"), ("0", "give at least 1 trial"),
                                         ("many", "not a whole number")])
def test_bad_limit(tmp_path, capsys, value, text):
    cfg = _config(tmp_path, tmp_path / "d")
    assert text in _one_line_error(capsys, ["behave", "--config", str(cfg), "--limit", value])


def test_model_config_json_not_json(tmp_path, capsys):
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{ not json")
    cfg = _config(tmp_path, tmp_path / "d", model=str(model))
    for stage in ("vocab", "trials"):
        assert cli.main([stage, "--config", str(cfg)]) == 0
    msg = _one_line_error(capsys, ["behave", "--config", str(cfg), "--set", "behave.backend=hf"])
    assert "config.json is not valid JSON" in msg and "models[0].path" in msg


@pytest.mark.parametrize("stage", ["vocab", "trials", "behave", "aggregate", "rsa", "report"])
def test_data_dir_under_a_file(tmp_path, capsys, stage):
    blocker = tmp_path / "afile"
    blocker.write_text("x")
    cfg = _config(tmp_path, blocker / "data")
    msg = _one_line_error(capsys, [stage, "--config", str(cfg)])
    assert f"{blocker} is a file" in msg and "experiment.data_dir" in msg
    assert blocker.read_text() == "x"


@pytest.fixture
def readonly_dir(tmp_path):
    """A read-only tmpfs (needs root and mount); the tests using it are skipped elsewhere."""
    d = tmp_path / "ro"
    d.mkdir()
    ok = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(d)], capture_output=True).returncode == 0
    if not ok:
        pytest.skip("cannot mount a read-only file system here")
    yield d
    subprocess.run(["umount", "-l", str(d)], capture_output=True)


def _remount_ro(d: Path) -> None:
    subprocess.run(["mount", "-o", "remount,ro", str(d)], check=True, capture_output=True)


@pytest.mark.parametrize("stage", ["vocab", "trials", "behave", "aggregate", "hidden", "rsa"])
def test_data_dir_on_a_read_only_file_system(tmp_path, capsys, readonly_dir, stage):
    _remount_ro(readonly_dir)
    cfg = _config(tmp_path, readonly_dir / "data")
    msg = _one_line_error(capsys, [stage, "--config", str(cfg)])
    assert "Read-only file system" in msg and "experiment.data_dir" in msg


def test_finished_experiment_on_a_read_only_copy(tmp_path, capsys, readonly_dir):
    work = tmp_path / "work"
    cfg = _config(tmp_path, work)
    for stage in ("vocab", "trials", "behave", "aggregate"):
        assert cli.main([stage, "--config", str(cfg)]) == 0
    shutil.copytree(work, readonly_dir / "data", copy_function=shutil.copy2)
    _remount_ro(readonly_dir)
    (tmp_path / "ro-cfg").mkdir()
    ro_cfg = _config(tmp_path / "ro-cfg", readonly_dir / "data")
    capsys.readouterr()
    for stage in ("vocab", "trials", "behave", "aggregate"):
        assert cli.main([stage, "--config", str(ro_cfg)]) == 0, capsys.readouterr().err
    msg = _one_line_error(capsys, ["trials", "--config", str(ro_cfg), "--set", "trials.fa_runs=3", "--force"])
    assert "Read-only file system" in msg and "copy the experiment" in msg
    assert sorted(os.listdir(readonly_dir / "data" / "x")) == sorted(os.listdir(work / "x"))


def test_cuda_device_without_cuda(tmp_path, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    cfg = _config(tmp_path, tmp_path / "d", extra='[hidden]\ndevice = "cuda"\nstrategies = ["meaning"]\n')
    assert cli.main(["vocab", "--config", str(cfg)]) == 0
    assert "hidden.device = 'cuda' but this machine has no usable CUDA device" in _one_line_error(
        capsys, ["hidden", "--config", str(cfg)])


def test_set_reaches_model_fields(tmp_path, capsys):
    from pipeline.config import load_config

    cfg = _config(tmp_path, tmp_path / "d")
    c = load_config(cfg, ["models[0].path=/elsewhere", "models.m.dtype=float32"])
    assert (c.models[0].path, c.models[0].dtype) == ("/elsewhere", "float32")
    assert "no [[models]] entry named 'q'" in _one_line_error(
        capsys, ["vocab", "--config", str(cfg), "--set", "models.q.path=/x"])
    assert "unknown key 'models[0].pth'; did you mean 'models[0].path'" in _one_line_error(
        capsys, ["vocab", "--config", str(cfg), "--set", "models[0].pth=/x"])


def test_plan_trials_command(tmp_path, capsys):
    import pandas as pd

    cfg = _config(tmp_path, tmp_path / "d")
    line = _one_line_error(capsys, ["plan-trials", "--config", str(cfg)])
    assert "no split-half reliability yet" in line and "python -m pipeline rsa" in line
    assert cli.main(["vocab", "--config", str(cfg)]) == 0
    results = tmp_path / "d" / "x" / "results"
    results.mkdir(parents=True)
    pd.DataFrame([{"model": "m", "paradigm": "fa", "method": "spearman", "reliability": 0.5}]).to_parquet(
        results / "reliability.parquet")
    capsys.readouterr()
    assert cli.main(["plan-trials", "--config", str(cfg)]) == 0
    out = capsys.readouterr().out
    # Spearman-Brown: 0.8 * 0.5 / (0.5 * 0.2) = 4x the data, 2 runs -> 8 runs per cue
    assert "FA (m): r_SB = 0.500 (spearman) with trials.fa_runs = 2; 0.8 needs 4.0x the data, trials.fa_runs = 8:" in out
    assert "160 trials for these 20 words, and 40,000 trials" in out


def test_the_cli_starts_without_the_heavy_libraries():
    """Internal imports sit at module top unless they would close an import cycle or load a
    heavy library at start-up; this keeps `python -m pipeline --help` light."""
    import sys

    heavy = ["pandas", "pyarrow", "scipy", "sklearn", "torch", "vllm", "transformers", "ray", "matplotlib"]
    code = f"import sys, pipeline.cli; print([m for m in {heavy!r} if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"

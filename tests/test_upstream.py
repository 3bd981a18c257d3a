"""A stage run on its own checks what its upstream stages built against the config it is
given: a changed upstream setting is refused naming the stage to re-run, and an upstream
file edited since it was written is refused naming the stage that restores it."""

from __future__ import annotations

import pytest
from test_cli import _config, _one_line_error

from pipeline import cli


@pytest.fixture
def finished(tmp_path, capsys):
    cfg = _config(tmp_path, tmp_path / "d")
    for stage in ("vocab", "trials", "behave", "aggregate"):
        assert cli.main([stage, "--config", str(cfg)]) == 0
    capsys.readouterr()
    return cfg


@pytest.mark.parametrize("stage", ["behave", "aggregate", "export", "rsa", "regress", "report"])
def test_changed_vocab_size_is_refused_naming_vocab(finished, capsys, stage):
    msg = _one_line_error(capsys, [stage, "--config", str(finished), "--set", "vocab.size=21"])
    assert "vocab.size" in msg and "`python -m pipeline vocab" in msg and "experiment.name" in msg


@pytest.mark.parametrize("stage", ["behave", "aggregate", "export"])
def test_changed_fa_runs_is_refused_naming_trials(finished, capsys, stage):
    msg = _one_line_error(capsys, [stage, "--config", str(finished), "--set", "trials.fa_runs=5"])
    assert "trials.fa_runs" in msg and "`python -m pipeline trials" in msg


def test_changed_behave_setting_is_refused_by_aggregate(finished, capsys):
    msg = _one_line_error(capsys, ["aggregate", "--config", str(finished), "--set", "behave.fa_temperature=0.9"])
    assert "behave.fa_temperature" in msg and "`python -m pipeline behave" in msg


def test_unchanged_settings_still_skip(finished, capsys):
    for stage in ("trials", "behave", "aggregate"):
        assert cli.main([stage, "--config", str(finished)]) == 0


def test_edited_vocab_is_restored_by_vocab_not_force(finished, tmp_path, capsys):
    vocab = tmp_path / "d" / "x" / "vocab.txt"
    original = vocab.read_text()
    lines = original.splitlines()
    lines[0], lines[1] = lines[1], lines[0]
    vocab.write_text("\n".join(lines) + "\n")
    logs_before = sorted(p.name for p in (tmp_path / "d" / "x").rglob("*.parquet"))
    msg = _one_line_error(capsys, ["behave", "--config", str(finished)])
    assert "vocab.txt" in msg and "`python -m pipeline vocab --config" in msg and "--force" not in msg
    assert sorted(p.name for p in (tmp_path / "d" / "x").rglob("*.parquet")) == logs_before
    assert cli.main(["vocab", "--config", str(finished)]) == 0
    assert vocab.read_text() == original
    assert cli.main(["behave", "--config", str(finished)]) == 0


def test_edited_trial_plan_is_restored_by_trials(finished, tmp_path, capsys):
    plan = tmp_path / "d" / "x" / "trials" / "fa.parquet"
    assert plan.exists()
    original = plan.read_bytes()
    plan.write_bytes(original[: len(original) // 2])
    msg = _one_line_error(capsys, ["aggregate", "--config", str(finished)])
    assert "fa.parquet" in msg and "`python -m pipeline trials --config" in msg and "--force" not in msg
    assert cli.main(["trials", "--config", str(finished)]) == 0
    assert plan.read_bytes() == original
    assert cli.main(["aggregate", "--config", str(finished)]) == 0


def test_narrowed_run_checks_only_what_it_reads(finished, capsys):
    msg = _one_line_error(capsys, ["aggregate", "--config", str(finished), "--set", "behave.fa_temperature=0.9"])
    assert "behave/m/fa" in msg
    assert cli.main(["aggregate", "--config", str(finished), "--paradigm", "fc", "--set",
                     "behave.fa_temperature=0.9"]) == 0

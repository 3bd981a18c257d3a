"""Hostile inputs of issue 19 (items 10, 13, 14) through the command line: each ends in one
line naming the problem and the fix (exit 2, no traceback), or works as documented."""

from __future__ import annotations

import pytest
from test_cli import _config, _one_line_error

from pipeline import cli


def test_scored_fc_with_one_pick_runs_where_generated_fc_is_refused(tmp_path, capsys):
    cfg = _config(tmp_path, tmp_path / "d", extra="")
    text = cfg.read_text().replace("[behave]\n", "[behave]\nparadigms = [\"fa\", \"fc_scored\"]\n")
    cfg.write_text(text.replace("fa_runs = 2\n", "fa_runs = 2\nfc_picks = 1\n"))
    for stage in ("vocab", "trials", "behave", "aggregate"):
        assert cli.main([stage, "--config", str(cfg)]) == 0, capsys.readouterr().err
    msg = _one_line_error(capsys, ["vocab", "--config", str(cfg), "--set", 'behave.paradigms=["fc", "fa"]'])
    assert "trials.fc_picks" in msg and "fc_scored" in msg


@pytest.mark.parametrize("stage", [*cli.DAG, "export"])
@pytest.mark.parametrize("content", [b'{"stages": {}, "x": "\xff\xfe"}', b"[1, 2]"])
def test_manifest_not_utf8_or_not_an_object(tmp_path, capsys, stage, content):
    cfg = _config(tmp_path, tmp_path / "d")
    run = tmp_path / "d" / "x"
    run.mkdir(parents=True)
    (run / "manifest.json").write_bytes(content)
    msg = _one_line_error(capsys, [stage, "--config", str(cfg)])
    assert "manifest.json" in msg and "restore it" in msg
    assert (run / "manifest.json").read_bytes() == content


def test_shard_number_too_large(tmp_path, capsys):
    cfg = _config(tmp_path, tmp_path / "d")
    for stage in ("vocab", "trials"):
        assert cli.main([stage, "--config", str(cfg)]) == 0
    msg = _one_line_error(capsys, ["behave", "--config", str(cfg), "--shard", "0/99999999999999999999999"])
    assert "--shard" in msg


def test_hidden_on_truncated_weights(tmp_path, capsys):
    import shutil

    from conftest import SMOLLM2

    model = tmp_path / "model"
    model.mkdir()
    for f in SMOLLM2.iterdir():
        if f.name != "model.safetensors":
            shutil.copy(f, model / f.name)
    with open(SMOLLM2 / "model.safetensors", "rb") as f:
        (model / "model.safetensors").write_bytes(f.read(1_000_000))
    cfg = _config(tmp_path, tmp_path / "d", model=str(model),
                  extra='[hidden]\ndevice = "cpu"\nstrategies = ["meaning"]\n')
    assert cli.main(["vocab", "--config", str(cfg)]) == 0
    msg = _one_line_error(capsys, ["hidden", "--config", str(cfg)])
    assert "model 'm': cannot load" in msg and "model.safetensors" in msg


@pytest.mark.parametrize("device", ["meta", "mps", "xla"])
def test_hidden_device_that_cannot_compute(tmp_path, capsys, device):
    import torch

    if device == "mps" and torch.backends.mps.is_available():
        pytest.skip("this machine has MPS")
    cfg = _config(tmp_path, tmp_path / "d", extra=f'[hidden]\ndevice = "{device}"\nstrategies = ["meaning"]\n')
    assert cli.main(["vocab", "--config", str(cfg)]) == 0
    msg = _one_line_error(capsys, ["hidden", "--config", str(cfg)])
    assert f"hidden.device = '{device}'" in msg and "'cpu'" in msg


def test_export_after_a_limited_behave_run_says_the_matrices_are_partial(tmp_path, capsys, caplog):
    from pipeline.manifest import Manifest

    cfg = _config(tmp_path, tmp_path / "d")
    for argv in (["vocab"], ["trials"], ["behave", "--limit", "5"], ["aggregate"], ["export"]):
        assert cli.main([*argv, "--config", str(cfg)]) == 0, capsys.readouterr().err
    warned = [r.message for r in caplog.records if r.levelname == "WARNING" and r.name == "pipeline.export"]
    assert any("fc" in w and "5 of" in w and "partial" in w for w in warned), warned
    summary = Manifest(tmp_path / "d" / "x").summary("export/m/fc_ppmi")
    assert summary["partial"] is True and summary["behave_trials"] == 5

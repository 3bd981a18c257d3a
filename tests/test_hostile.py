"""Hostile inputs of issue 19 (items 10, 13, 14) through the command line: each ends in one
line naming the problem and the fix (exit 2, no traceback), or works as documented."""

from __future__ import annotations

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

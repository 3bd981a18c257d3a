"""Stage record keys and rebuild commands (`keys`): one spelling, and commands the CLI accepts."""

from __future__ import annotations

import pytest

from pipeline import keys
from pipeline.cli import build_parser


class _Cfg:
    source = "configs/demo.toml"


@pytest.mark.parametrize("kw", [{}, {"model": "m", "paradigm": "fa"}, {"model": "m", "strategy": "meaning"},
                                {"force": True}])
def test_rebuild_commands_parse_as_the_stage_they_name(kw):
    line = keys.command(_Cfg(), "aggregate", **kw)
    argv = line.split()
    assert argv[:3] == ["python", "-m", "pipeline"]
    ns = build_parser().parse_args(argv[3:])
    assert (ns.stage, ns.config, ns.model, ns.paradigm, ns.strategy, ns.force) == (
        "aggregate", "configs/demo.toml", kw.get("model"), kw.get("paradigm"), kw.get("strategy"),
        kw.get("force", False))


def test_record_keys():
    assert keys.behave("m", "fc") == "behave/m/fc"
    assert keys.hidden("m", "meaning") == "hidden/m/meaning"
    assert keys.trials("fa") == "trials.fa"
    assert keys.rsa_cell("m", "s").startswith(keys.RSA + "/") and keys.regress_cell("m", "s").startswith("regress/")
    assert keys.consensus("m", "s") == "baselines/consensus/m/s"

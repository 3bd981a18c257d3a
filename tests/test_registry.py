"""The plug-in registry shared by backends and paradigms."""

from __future__ import annotations

import sys

import pytest

from pipeline.errors import PipelineError
from pipeline.registry import Registry


@pytest.fixture
def plugins(tmp_path, monkeypatch):
    """A package `plugs` with two plug-in modules and a `base` that must not be imported."""
    pkg = tmp_path / "plugs"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("from pipeline.registry import Registry\n"
                                     "REG = Registry(__name__, 'plug', make=lambda cls: cls())\n")
    (pkg / "base.py").write_text("raise RuntimeError('base is not a plug-in')\n")
    for name, rank in (("zeta", 0), ("alpha", 1)):
        (pkg / f"{name}.py").write_text(f"from . import REG\n\n@REG.register('{name}')\nclass P:\n    rank = {rank}\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield __import__("plugs").REG
    for m in [m for m in sys.modules if m == "plugs" or m.startswith("plugs.")]:
        del sys.modules[m]


def test_modules_are_imported_when_first_asked_and_ordered_by_rank(plugins):
    assert "plugs.zeta" not in sys.modules
    assert plugins.names() == ["zeta", "alpha"]
    assert type(plugins.get("alpha")).name == "alpha"
    assert plugins.find("nope") is None


def test_an_unknown_name_is_one_message_naming_the_registered_ones(plugins):
    with pytest.raises(PipelineError, match=r"unknown plug 'nope' \(in x\.toml\); use one of zeta, alpha"):
        plugins.get("nope", " (in x.toml)")


def test_backends_and_paradigms_share_it():
    from pipeline import backends, paradigms

    assert isinstance(backends._REGISTRY, Registry) and isinstance(paradigms._REGISTRY, Registry)
    assert backends.names()[0] == "vllm" and paradigms.names()[:2] == ("fc", "fa")

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


def test_no_stage_names_a_paradigm():
    """Outside `pipeline/paradigms/`, no module tests a paradigm by name: stages ask the
    registry. The one exception is `released`, which reads the authors' dataset, whose files
    are exactly `forced_choice/` (fc) and `free_association/` (fa)."""
    import re
    from pathlib import Path

    import pipeline

    pattern = re.compile(r"""(?<![.\w])paradigm\s*[!=]=|["']fc_scored["']|["']triplet(_scored)?["']"""
                         r"""|\(\s*["']fc["']\s*,\s*["']fa["']\s*\)|["']f[ac]["']\s*(==|!=|in\b)|==\s*["']f[ac]["']""")
    root = Path(pipeline.__file__).parent
    found = {}
    for path in sorted(root.rglob("*.py")):
        if "paradigms" in path.parts:
            continue
        hits = [n for n, line in enumerate(path.read_text().splitlines(), 1)
                if not line.lstrip().startswith("#") and pattern.search(line)]
        if hits:
            found[str(path.relative_to(root))] = hits
    assert set(found) <= {"released.py"}, found
    assert len(found.get("released.py", [])) <= 2, found

"""options: one typed options object and one selection of models, paradigms, strategies."""

from __future__ import annotations

import argparse

import pytest

from pipeline.errors import PipelineError
from pipeline.options import Options, select


def test_of_accepts_namespaces_partial_objects_and_none():
    assert Options.of(None) == Options()
    o = Options.of(argparse.Namespace(model="m", shard=[1, 4], layers=[2, 3], force=True, extra="ignored"))
    assert (o.model, o.shard, o.layers, o.force, o.engine) == ("m", (1, 4), (2, 3), True, "local")
    assert Options.of(o) is o


def test_select_narrows_and_names_bad_choices(make_config):
    cfg = make_config(models=[{"name": "a", "path": "x"}, {"name": "b", "path": "y"}],
                      hidden={"strategies": ["meaning", "task_fc"]})
    sel = select(cfg)
    assert (sel.models, sel.paradigms, sel.strategies) == (["a", "b"], ["fc", "fa"], ["meaning", "task_fc"])
    sel = select(cfg, argparse.Namespace(model="b", paradigm="fa", strategy="task_fc"))
    assert (sel.models, sel.paradigms, sel.strategies) == (["b"], ["fa"], ["task_fc"])
    with pytest.raises(PipelineError, match="no model named 'c'; models in this config: a, b"):
        select(cfg, argparse.Namespace(model="c"))
    with pytest.raises(PipelineError, match="--strategy averaged: not in hidden.strategies"):
        select(cfg, argparse.Namespace(strategy="averaged"))
    with pytest.raises(PipelineError, match="no \\[\\[models\\]\\] entries"):
        select(make_config(models=[]))

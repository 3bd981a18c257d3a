"""Merged result tables (`merge`): finished cells only, a record when every cell is in, skip
when nothing changed, rebuild (not refuse) under other settings."""

from __future__ import annotations

import pandas as pd

from pipeline.manifest import Manifest
from pipeline.merge import finished, merge, summaries
from pipeline.store import write_parquet


def _part(path, value):
    write_parquet(pd.DataFrame({"v": [value]}), path)
    return path


def test_finished_lists_complete_records_in_order(tmp_path):
    man = Manifest(tmp_path)
    for key, done in (("c/b", True), ("c/a", False), ("c/c", True)):
        man.start(key, "fp")
        if done:
            man.complete(key, "fp")
    assert finished(man, {"b": "c/b", "a": "c/a", "c": "c/c", "d": "c/d"}) == ["b", "c"]


def test_merge_records_only_when_every_cell_is_in_and_then_skips(tmp_path):
    man = Manifest(tmp_path)
    out = tmp_path / "table.parquet"
    a, b = _part(tmp_path / "a.parquet", 1), _part(tmp_path / "b.parquet", 2)
    empty = tmp_path / "e.parquet"
    write_parquet(pd.DataFrame({"v": pd.Series([], dtype="int64")}), empty)
    merge(man, "t", {"cells": ["a"]}, man.ids([a]), {out: ([a], ["v"])}, 1, 2, {"cells": 1})
    assert pd.read_parquet(out).v.tolist() == [1] and man.stage("t") is None
    merge(man, "t", {"cells": ["a", "b"]}, man.ids([a, b]), {out: ([a, empty, b, tmp_path / "gone"], ["v"])},
          2, 2, {"cells": 2})
    assert pd.read_parquet(out).v.tolist() == [1, 2] and man.summary("t") == {"cells": 2}
    mtime = out.stat().st_mtime_ns
    merge(man, "t", {"cells": ["a", "b"]}, man.ids([a, b]), {out: ([a, b], ["v"])}, 2, 2, {"cells": 2})
    assert out.stat().st_mtime_ns == mtime
    merge(man, "t", {"cells": ["a", "b"], "settings": "other"}, man.ids([a, b]), {out: ([b], ["v"])}, 2, 2,
          {"cells": 2})
    assert pd.read_parquet(out).v.tolist() == [2] and man.stage("t")["complete"]


def test_merge_of_no_rows_writes_the_empty_table(tmp_path):
    man = Manifest(tmp_path)
    out = tmp_path / "table.parquet"
    merge(man, "t", {"cells": []}, {}, {out: ([], ["model", "rsa"])}, 0, 0, {"cells": 0})
    assert list(pd.read_parquet(out).columns) == ["model", "rsa"]


def test_summaries_of_the_records_that_have_one(tmp_path):
    man = Manifest(tmp_path)
    man.start("b/x", "fp")
    man.complete("b/x", "fp", {"n": 1})
    man.start("b/y", "fp")
    assert summaries(man, {"x": "b/x", "y": "b/y", "z": "b/z"}) == {"x": {"n": 1}}

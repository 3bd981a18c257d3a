"""Manifest: stage records, skip/continue/stale decisions, atomic writes, concurrent updates."""

from __future__ import annotations

import hashlib
import json
import multiprocessing

import pytest

from pipeline.errors import PipelineError
from pipeline.manifest import Manifest, StaleStageError, fingerprint, package_versions
from pipeline.store import atomic_write_bytes, sha256_file


def test_fingerprint_is_stable_and_key_order_free():
    a = fingerprint({"x": 1, "y": [1, 2], "z": {"b": 2, "a": 1}})
    b = fingerprint({"z": {"a": 1, "b": 2}, "y": [1, 2], "x": 1})
    assert a == b and len(a) == 16
    assert fingerprint({"x": 2, "y": [1, 2], "z": {"b": 2, "a": 1}}) != a
    assert fingerprint({"x": 1, "y": [2, 1], "z": {"b": 2, "a": 1}}) != a


def test_new_stage_runs_then_completes_then_skips(tmp_path):
    man = Manifest(tmp_path / "run")
    assert man.check("trials.fc", "fp1") is False
    man.start("trials.fc", "fp1")
    assert man.stage("trials.fc")["complete"] is False
    assert man.check("trials.fc", "fp1") is False
    man.complete("trials.fc", "fp1", {"n_trials": 40})
    assert man.check("trials.fc", "fp1") is True
    assert man.summary("trials.fc") == {"n_trials": 40}
    assert Manifest(tmp_path / "run").check("trials.fc", "fp1") is True
    rec = json.loads((tmp_path / "run" / "manifest.json").read_text())["stages"]["trials.fc"]
    assert rec["complete"] and rec["inputs"] == "fp1" and "finished" in rec


def test_changed_inputs_are_refused(tmp_path):
    man = Manifest(tmp_path)
    man.start("vocab", "old")
    man.complete("vocab", "old")
    with pytest.raises(StaleStageError) as e:
        man.check("vocab", "new")
    msg = str(e.value)
    assert "stage 'vocab'" in msg and str(tmp_path) in msg
    assert "old" in msg and "new" in msg and "--force" in msg and "experiment.name" in msg
    assert isinstance(e.value, PipelineError)
    assert man.stage("vocab")["inputs"] == "old" and man.stage("vocab")["complete"]


def test_interrupted_stage_with_other_inputs_is_refused_too(tmp_path):
    man = Manifest(tmp_path)
    man.start("behave.m.fc", "old")
    with pytest.raises(StaleStageError):
        man.check("behave.m.fc", "new")


def test_a_start_that_wrote_nothing_does_not_hold_its_settings(tmp_path):
    man = Manifest(tmp_path)
    man.start("behave/m/fc", "old")
    assert man.check("behave/m/fc", "new", partial=False) is False
    with pytest.raises(StaleStageError):
        man.check("behave/m/fc", "new", partial=True)
    step = man.step("behave/m/fc", "new", partial=lambda: False)
    assert step.done() is False
    step.start()
    assert man.stage("behave/m/fc")["inputs"] == "new"
    out = tmp_path / "kept.txt"
    out.write_text("x")
    man.complete("behave/m/fc", "new", outputs=[out])
    man.start("behave/m/fc", "new")
    with pytest.raises(StaleStageError):  # an interrupted rerun: what the first run wrote is still there
        man.check("behave/m/fc", "newer", partial=False)


def test_force_reruns_and_resets_the_record(tmp_path):
    man = Manifest(tmp_path)
    man.start("vocab", "old")
    man.complete("vocab", "old", {"n": 1})
    assert man.check("vocab", "new", force=True) is False
    man.start("vocab", "new")
    rec = man.stage("vocab")
    assert rec["inputs"] == "new" and rec["complete"] is False and "summary" not in rec
    man.complete("vocab", "new", {"n": 2})
    assert man.check("vocab", "new") is True and man.summary("vocab") == {"n": 2}


def test_replace_stale_rebuilds_a_derived_record_that_force_alone_would_refuse(tmp_path):
    """A record of outputs derived from others (merged tables, the report) is rebuilt under
    other settings without --force; an ordinary record is refused."""
    man = Manifest(tmp_path)
    for key in ("rsa", "aggregate/m/fc"):
        man.start(key, "old")
        man.complete(key, "old")
    step = man.step("rsa", "new", replace_stale=True)
    assert step.done() is False and step.force is False
    with pytest.raises(StaleStageError):
        man.step("aggregate/m/fc", "new").done()
    assert man.step("aggregate/m/fc", "new", force=True).done() is False
    assert man.step("rsa", "old", replace_stale=True).done() is True


def test_restart_with_same_inputs_keeps_start_time(tmp_path):
    man = Manifest(tmp_path)
    man.start("hidden.m.meaning", "fp")
    started = man.stage("hidden.m.meaning")["started"]
    man.start("hidden.m.meaning", "fp")
    assert man.stage("hidden.m.meaning")["started"] == started


def test_record_run_and_append(tmp_path, make_config):
    cfg = make_config()
    man = Manifest(cfg.run_dir)
    man.record_run(cfg, {"fc": "abc"})
    m = man.read()
    assert m["config"]["trials"]["fc_seed"] == 12345 and m["config_file"] == "test.toml"
    assert m["seeds"] == {"fc": 12345, "fa": 12345, "rsa": 0, "regress": [0]}
    assert m["prompts"] == {"fc": "abc"}
    assert m["versions"]["python"] and "numpy" in m["versions"]
    man.append("timings", {"a": 1})
    man.append("timings", {"b": 2})
    assert man.read()["timings"] == [{"a": 1}, {"b": 2}]
    assert package_versions()["pyarrow"]


def test_corrupt_manifest_is_reported(tmp_path):
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(PipelineError, match=r"manifest\.json: manifest is not valid JSON"):
        Manifest(tmp_path).check("vocab", "fp")


def test_atomic_write_and_sha(tmp_path):
    target = tmp_path / "sub" / "f.bin"
    atomic_write_bytes(target, b"hello")
    atomic_write_bytes(target, b"world!")
    assert target.read_bytes() == b"world!"
    assert [p.name for p in target.parent.iterdir()] == ["f.bin"]
    assert sha256_file(target) == hashlib.sha256(b"world!").hexdigest()


def _complete_many(run_dir, worker, n):
    man = Manifest(run_dir)
    for i in range(n):
        man.start(f"k{worker}.{i}", "fp")
        man.complete(f"k{worker}.{i}", "fp", {"w": worker})


def test_concurrent_processes_do_not_lose_records(tmp_path):
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_complete_many, args=(tmp_path, w, 15)) for w in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    stages = Manifest(tmp_path).read()["stages"]
    assert len(stages) == 60 and all(r["complete"] for r in stages.values())

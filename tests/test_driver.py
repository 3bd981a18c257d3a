"""driver: the pipelined behave driver gives exactly the lock-step driver's logs."""

from __future__ import annotations

import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from _synthetic import prepare

from benchmarks import legacy_driver
from pipeline import behave, driver, logs, paradigms, paths, trials, vocab
from pipeline.backends.fake import FakeBackend
from pipeline.options import Options


def _without_latency(t: pa.Table) -> list[dict]:
    return t.drop(["latency_s"]).to_pylist()


@pytest.mark.parametrize("paradigm", ["fc", "fa"])
@pytest.mark.parametrize("chunk_size, lookahead", [(7, 1), (16, 4), (5, 3)])
def test_pipelined_rows_equal_the_lock_step_driver(make_config, paradigm, chunk_size, lookahead):
    cfg = prepare(make_config(behave={"chunk_size": chunk_size}))
    plan = trials.load_trials(cfg, paradigm)
    words = vocab.load_run_vocab(cfg)
    chunks = [plan.slice(s, chunk_size) for s in range(0, plan.num_rows, chunk_size)]
    legacy = [legacy_driver.run_chunk(FakeBackend(fail=True), cfg, cfg.models[0], paradigm, c, words) for c in chunks]
    fake = FakeBackend(fail=True)
    proto = paradigms.get(paradigm).protocol(fake, cfg, cfg.models[0], words)
    published = []
    driver.run_pipelined(fake, proto, iter(chunks), published.append, chunk_size, lookahead)
    assert [_without_latency(t) for t in published] == [_without_latency(t) for t in legacy]
    if paradigm == "fc":
        kinds = {r["attempt_kind"] for t in published for r in t.to_pylist()}
        assert kinds == {"main", "repair", "retry"}
        # Follow-ups shared calls with other chunks' main requests: fewer calls than lock-step passes.
        assert lookahead == 1 or fake.calls < sum(len({r["attempt"] for r in t.to_pylist()}) for t in legacy)


def test_stage_parts_equal_the_lock_step_stage(make_config, monkeypatch):
    """The same run through the stage, pipelined (fake is batch-invariant) and lock-step."""
    os.environ["PIPELINE_FAKE_FAIL"] = "1"
    try:
        a = prepare(make_config(behave={"chunk_size": 6}))
        behave.run(a, Options(paradigm="fc"))
        b = prepare(make_config(experiment={"name": "lockstep", "data_dir": str(a.experiment.data_dir)},
                                behave={"chunk_size": 6}))
        monkeypatch.setattr(FakeBackend, "batch_invariant", False)
        behave.run(b, Options(paradigm="fc"))
    finally:
        del os.environ["PIPELINE_FAKE_FAIL"]
    pa_parts = logs.list_parts(paths.behavior_dir(a, "m", "fc"))
    pb_parts = logs.list_parts(paths.behavior_dir(b, "m", "fc"))
    assert [p.name for p in pa_parts] == [p.name for p in pb_parts] and len(pa_parts) > 3
    for x, y in zip(pa_parts, pb_parts):
        assert _without_latency(pq.read_table(x)) == _without_latency(pq.read_table(y))


class _Broken(FakeBackend):
    def generate(self, requests):
        if self.calls >= 2:
            raise RuntimeError("engine died")
        return super().generate(requests)


def test_engine_error_reaches_the_caller_and_publishes_only_whole_chunks(make_config):
    cfg = prepare(make_config(behave={"chunk_size": 5}))
    plan = trials.load_trials(cfg, "fc")
    chunks = [plan.slice(s, 5) for s in range(0, plan.num_rows, 5)]
    be = _Broken()
    published = []
    with pytest.raises(RuntimeError, match="engine died"):
        driver.run_pipelined(be, paradigms.get("fc").protocol(be, cfg, cfg.models[0]), iter(chunks),
                             published.append, 5)
    assert all(t.num_rows == 5 and all(t.column("final").to_pylist()) for t in published)

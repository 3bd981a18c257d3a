"""Trial log store: atomic parts, corrupt-part reporting, locks, shard split, final-row streaming."""

from __future__ import annotations

import multiprocessing as mp
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline import logs
from pipeline.errors import PipelineError


def rows(trial_ids, attempts=1, status="ok"):
    """Log rows: `attempts` rows per trial, the last one final."""
    recs = []
    for t in trial_ids:
        for a in range(attempts):
            last = a == attempts - 1
            recs.append({
                "trial_id": t, "cue_idx": t // 10, "cue": f"cue{t // 10}", "candidates": ["a", "b", "c"],
                "run": None, "attempt": a, "attempt_kind": "main" if a == 0 else "repair",
                "raw_output": "output: a, b" if last else "nope", "picks": ["a", "b"] if last else [],
                "extracted": ["a", "b"] if last else [], "status": status if last else "unparseable",
                "final": last, "seed": None, "prompt_sha": "x" * 64, "n_prompt_tokens": 10,
                "n_output_tokens": 3, "latency_s": 0.1})
    return pa.Table.from_pylist(recs)


def test_write_part_roundtrip_and_names(tmp_path):
    d = tmp_path / "b"
    p1 = logs.write_part(d, rows([0, 1, 2], attempts=2))
    p2 = logs.write_part(d, rows([3, 4]))
    p3 = logs.write_part(d, rows([5]), shard=(1, 4))
    assert [p.name for p in logs.list_parts(d)] == sorted([p1.name, p2.name, p3.name])
    assert p1.name == "part-000of001-000000.parquet" and p2.name == "part-000of001-000001.parquet"
    assert p3.name == "part-001of004-000000.parquet"
    assert pq.read_schema(p1).equals(logs.SCHEMA)
    assert list(logs.finished_ids(d)) == [0, 1, 2, 3, 4, 5]
    assert not [p for p in d.iterdir() if p.name.startswith(".tmp-")]


def test_write_part_never_overwrites(tmp_path):
    d = tmp_path / "b"
    p1 = logs.write_part(d, rows([0]))
    before = p1.read_bytes()
    # A part number taken by someone else between listing and publishing: simulated by
    # pre-creating the next names.
    (d / "part-000of001-000001.parquet").write_bytes(pq.read_table(p1).to_pandas().to_json().encode())
    p2 = logs.write_part(d, rows([1]))
    assert p2.name == "part-000of001-000002.parquet"
    assert p1.read_bytes() == before


def test_conform_rejects_missing_columns(tmp_path):
    with pytest.raises(ValueError, match="status"):
        logs.write_part(tmp_path, rows([0]).drop_columns(["status"]))


def test_iter_final_streams_only_final_rows(tmp_path):
    d = tmp_path / "b"
    logs.write_part(d, rows(range(0, 50), attempts=3))
    logs.write_part(d, rows(range(50, 120), attempts=1))
    got = pa.Table.from_batches(list(logs.iter_final(d, ["trial_id", "picks"], batch_size=7)))
    assert got.column_names == ["trial_id", "picks"]
    assert sorted(got.column("trial_id").to_pylist()) == list(range(120))
    assert all(p == ["a", "b"] for p in got.column("picks").to_pylist())


def test_iter_final_drops_duplicate_trials(tmp_path, caplog):
    d = tmp_path / "b"
    logs.write_part(d, rows([0, 1, 2]), shard=(0, 2))
    logs.write_part(d, rows([2, 3]), shard=(0, 3))
    got = [i for b in logs.iter_final(d, ["trial_id"]) for i in b.column("trial_id").to_pylist()]
    assert sorted(got) == [0, 1, 2, 3]
    assert "1 duplicate final rows" in caplog.text


def test_empty_or_missing_dir(tmp_path):
    assert logs.list_parts(tmp_path / "nope") == []
    assert len(logs.finished_ids(tmp_path / "nope")) == 0
    assert list(logs.iter_final(tmp_path / "nope")) == []


def test_truncated_part_is_reported_by_name(tmp_path):
    d = tmp_path / "b"
    logs.write_part(d, rows([0, 1]))
    p = logs.write_part(d, rows([2, 3]))
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])
    for call in (logs.list_parts, logs.finished_ids, lambda x: list(logs.iter_final(x))):
        with pytest.raises(PipelineError) as e:
            call(d)
        assert str(p) in str(e.value) and "move it aside" in str(e.value)
    assert p.exists()


def test_foreign_part_is_reported_by_name(tmp_path):
    d = tmp_path / "b"
    d.mkdir()
    foreign = d / "part-000of001-000000.parquet"
    pq.write_table(pa.table({"trial_id": [1, 2], "x": ["a", "b"]}), foreign)
    with pytest.raises(PipelineError, match="part-000of001-000000.parquet.*missing"):
        logs.list_parts(d)
    bad_type = d / "part-000of001-000000.parquet"
    pq.write_table(rows([0]).set_column(0, "trial_id", pa.array(["0"])), bad_type)
    with pytest.raises(PipelineError, match="trial_id.*type"):
        logs.list_parts(d)


def test_stray_temp_files_ignored_and_cleaned(tmp_path):
    d = tmp_path / "b"
    logs.write_part(d, rows([0]))
    mine = d / ".tmp-part-000of001-999-1.parquet"
    mine.write_bytes(b"PAR1 half")
    other_shard = d / ".tmp-part-001of002-999-1.parquet"
    other_shard.write_bytes(b"PAR1 half")
    assert len(logs.list_parts(d)) == 1
    with logs.WriterLock(d, (0, 2)):
        assert other_shard.exists()
    with logs.WriterLock(d, (1, 2)):
        assert not other_shard.exists()
    with logs.WriterLock(d):
        assert not mine.exists()


def _hold(d, shard, ready, done):
    with logs.WriterLock(d, shard):
        ready.set()
        done.wait(30)


@pytest.fixture
def holder(tmp_path):
    ctx = mp.get_context("fork")
    procs = []

    def start(shard):
        ready, done = ctx.Event(), ctx.Event()
        p = ctx.Process(target=_hold, args=(tmp_path / "b", shard, ready, done))
        p.start()
        assert ready.wait(30)
        procs.append((p, done))
        return p.pid
    yield start
    for p, done in procs:
        done.set()
        p.join(30)


def test_lock_conflict_names_lock_and_holder(tmp_path, holder):
    d = tmp_path / "b"
    pid = holder((0, 1))
    with pytest.raises(PipelineError) as e:
        with logs.WriterLock(d):
            pass
    assert ".writer.lock" in str(e.value) and f"pid {pid}" in str(e.value)
    with pytest.raises(PipelineError, match="unsharded run is writing"):
        with logs.WriterLock(d, (1, 2)):
            pass


def test_shards_coexist_but_not_twice_nor_mixed_n(tmp_path, holder):
    d = tmp_path / "b"
    pid = holder((0, 2))
    with logs.WriterLock(d, (1, 2)):
        pass
    with pytest.raises(PipelineError) as e:
        with logs.WriterLock(d, (0, 2)):
            pass
    assert "shard 0/2 is already running" in str(e.value) and f"pid {pid}" in str(e.value)
    with pytest.raises(PipelineError, match="same N"):
        with logs.WriterLock(d, (0, 3)):
            pass
    with pytest.raises(PipelineError, match=".writer.lock"):
        with logs.WriterLock(d):
            pass


def test_lock_released_on_exit_and_after_kill(tmp_path):
    d = tmp_path / "b"
    with logs.WriterLock(d):
        pass
    pid = os.fork()
    if pid == 0:
        lk = logs.WriterLock(d).__enter__()  # noqa: F841
        os.kill(os.getpid(), 9)
    os.waitpid(pid, 0)
    with logs.WriterLock(d):
        pass


@pytest.mark.parametrize("n", [1, 2, 3, 7])
def test_shard_split_covers_every_id_exactly_once(n):
    ids = np.random.default_rng(0).permutation(10_000).astype(np.int64)
    counts = sum(logs.shard_mask(ids, (i, n)).astype(int) for i in range(n))
    assert (counts == 1).all()
    sizes = [int(logs.shard_mask(ids, (i, n)).sum()) for i in range(n)]
    assert max(sizes) - min(sizes) <= 1

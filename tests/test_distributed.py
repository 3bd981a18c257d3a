"""`--engine ray` on a real local Ray cluster: same store as a local run, worker and driver deaths.

One 2-CPU cluster serves the whole module (Ray starts in about 10 s). The hf backend runs a
tiny random Llama in float32 with one torch thread, in the reference run as in every
actor, so that greedy and seeded outputs are bit-identical between engines.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

os.environ["RAY_USAGE_STATS_ENABLED"] = "0"

from pipeline import behave, hidden, logs, paths, trials, vocab  # noqa: E402
from pipeline.cli import run_stage
from pipeline.config import Config, load_config  # noqa: E402
from pipeline.distributed import behave as ray_behave  # noqa: E402
from pipeline.distributed import cluster as ray_cluster  # noqa: E402
from pipeline.errors import PipelineError  # noqa: E402
from pipeline.manifest import Manifest  # noqa: E402
from pipeline.options import Options

ray = pytest.importorskip("ray")

ROOT = Path(__file__).resolve().parents[1]
WORDS = ["dog", "cat", "house", "tree", "water", "music", "money", "car", "bread", "river", "doctor", "school"]
PARADIGMS = ("fc", "fa")


def build(root: Path, model_path, backend="hf", chunk_size=6, paradigms=("fc", "fa")) -> Config:
    """Config file, vocabulary and trial plans of a 12-word experiment under `root`."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "words.txt").write_text("\n".join(WORDS) + "\n")
    config = root / "test.toml"
    config.write_text(f"""
[experiment]
name = "t"
data_dir = "{root / 'data'}"
[vocab]
source = "{root / 'words.txt'}"
size = {len(WORDS)}
[trials]
fc_candidates = 4
fa_runs = 2
[behave]
backend = "{backend}"
paradigms = {list(paradigms)!r}
chunk_size = {chunk_size}
batch_size = 6
retries = 0
fa_max_tokens = 6
[[models]]
name = "m"
path = "{model_path}"
dtype = "float32"
[hidden]
strategies = ["meaning", "task_fc"]
dtype = "float32"
device = "cpu"
batch_size = 4
""")
    cfg = load_config(config)
    vocab.run(cfg, Options())
    trials.run(cfg, Options())
    return cfg


def rows(cfg, paradigm) -> pa.Table:
    """Every logged attempt, ordered, without the wall-clock column."""
    parts = logs.list_parts(paths.behavior_dir(cfg, "m", paradigm))
    t = pa.concat_tables([pq.read_table(p) for p in parts])
    return t.drop_columns(["latency_s"]).sort_by([("trial_id", "ascending"), ("attempt", "ascending")])


def assert_complete_without_duplicates(cfg, paradigm):
    plan = trials.load_trials(cfg, paradigm).column("trial_id").to_numpy()
    t = rows(cfg, paradigm)
    final_ids = t.filter(t.column("final")).column("trial_id").to_numpy()
    assert sorted(final_ids.tolist()) == sorted(plan.tolist())
    keys = list(zip(t.column("trial_id").to_pylist(), t.column("attempt").to_pylist()))
    assert len(keys) == len(set(keys))


@pytest.fixture(scope="module")
def cluster():
    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
    yield ray
    ray.shutdown()


@pytest.fixture
def one_thread():
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, tiny_llama_dir):
    """The single-process run every Ray run is compared with."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        cfg = build(tmp_path_factory.mktemp("local"), tiny_llama_dir)
        behave.run(cfg, Options())
    finally:
        torch.set_num_threads(before)
    return cfg


def test_plan_workers_gpu_and_cpu_clusters():
    r = ray_cluster.plan_workers({"CPU": 64, "GPU": 8}, gpus_per_worker=2, workers=None)
    assert (r.n, r.num_gpus, r.num_cpus) == (4, 2, 1)
    r = ray_cluster.plan_workers({"CPU": 64, "GPU": 8}, gpus_per_worker=1, workers=3)
    assert (r.n, r.num_gpus) == (3, 1)
    assert ray_cluster.plan_workers({"CPU": 64, "GPU": 8}, gpus_per_worker=4, workers=5).n == 2
    r = ray_cluster.plan_workers({"CPU": 2}, gpus_per_worker=1, workers=None)
    assert (r.n, r.num_cpus, r.num_gpus) == (2, 1, 0)
    r = ray_cluster.plan_workers({"CPU": 8, "GPU": 2}, gpus_per_worker=0, workers=2)
    assert (r.n, r.num_cpus, r.num_gpus) == (2, 4, 0)
    with pytest.raises(PipelineError, match="needs 4 GPUs"):
        ray_cluster.plan_workers({"CPU": 8, "GPU": 2}, gpus_per_worker=4, workers=None)
    with pytest.raises(PipelineError, match="--workers 0"):
        ray_cluster.plan_workers({"CPU": 8}, gpus_per_worker=1, workers=0)


@pytest.mark.slow
def test_ray_run_equals_single_process_run(cluster, reference, tiny_llama_dir, tmp_path, monkeypatch):
    cfg = build(tmp_path, tiny_llama_dir)
    completes = []
    real = Manifest.complete
    monkeypatch.setattr(Manifest, "complete", lambda self, k, *a, **kw: (completes.append(k), real(self, k, *a, **kw)))
    run_stage("behave", cfg, Options(engine="ray", workers=2))
    assert sorted(completes) == ["behave/m/fa", "behave/m/fc"]  # each record completed once, engine included
    man = Manifest(cfg.run_dir)
    for paradigm in PARADIGMS:
        assert_complete_without_duplicates(cfg, paradigm)
        assert rows(cfg, paradigm).equals(rows(reference, paradigm))
        summary = man.summary(f"behave/m/{paradigm}")
        ref_summary = Manifest(reference.run_dir).summary(f"behave/m/{paradigm}")
        how = ("engine", "last_run")  # how each invocation ran (workers, rates), not what it logged
        assert {k: v for k, v in summary.items() if k not in how} == {k: v for k, v in ref_summary.items()
                                                                       if k not in how}
        engine = summary["engine"]
        assert engine["name"] == "ray" and len(engine["workers"]) == 2 and engine["worker_failures"] == 0
        assert sum(w["trials"] for w in engine["workers"]) == summary["n_trials"]
        assert all(w["trials_per_s"] > 0 for w in engine["workers"] if w["trials"])
    names = [p.name for p in logs.list_parts(paths.behavior_dir(cfg, "m", "fc"))]
    assert len(names) == 6 and all(n.startswith("part-000of001-") for n in names)


@pytest.mark.slow
def test_ray_scores_fc_like_a_single_process(cluster, tiny_llama_dir, tmp_path, one_thread):
    local = build(tmp_path / "local", tiny_llama_dir, paradigms=("fc_scored",))
    behave.run(local, Options())
    cfg = build(tmp_path / "ray", tiny_llama_dir, paradigms=("fc_scored",))
    run_stage("behave", cfg, Options(engine="ray", workers=2))

    def scored_rows(c):
        parts = logs.list_parts(paths.behavior_dir(c, "m", "fc_scored"))
        return pa.concat_tables([pq.read_table(p) for p in parts]).drop_columns(["latency_s"]).sort_by("trial_id")

    got, want = scored_rows(cfg), scored_rows(local)
    assert got.column("trial_id").to_pylist() == trials.load_trials(cfg, "fc").column("trial_id").to_pylist()
    assert got.drop_columns(["logprobs", "probs"]).equals(want.drop_columns(["logprobs", "probs"]))
    for col in ("logprobs", "probs"):
        a = np.concatenate([np.asarray(v) for v in got.column(col).to_pylist()])
        b = np.concatenate([np.asarray(v) for v in want.column(col).to_pylist()])
        assert np.allclose(a, b, atol=1e-5)
    summary = Manifest(cfg.run_dir).summary("behave/m/fc_scored")
    assert summary["n_trials"] == got.num_rows and summary["engine"]["name"] == "ray"


@pytest.mark.slow
def test_worker_killed_mid_chunk_loses_and_duplicates_nothing(cluster, reference, tiny_llama_dir, tmp_path,
                                                              monkeypatch, caplog):
    cfg = build(tmp_path, tiny_llama_dir)
    marker = tmp_path / "crashed"
    monkeypatch.setenv("PIPELINE_FAULT_EXIT", f"2:{marker}")
    run_stage("behave", cfg, Options(engine="ray", workers=2, paradigm="fc"))
    assert marker.exists(), "no worker died: the fault drill did not fire"
    assert "failed on a chunk of behave/m/fc" in caplog.text
    assert_complete_without_duplicates(cfg, "fc")
    assert rows(cfg, "fc").equals(rows(reference, "fc"))
    engine = Manifest(cfg.run_dir).summary("behave/m/fc")["engine"]
    assert engine["worker_failures"] == 1
    assert sum(w["chunks"] for w in engine["workers"]) == 6


@pytest.mark.slow
def test_killed_driver_resumes_from_the_store(cluster, tmp_path, smollm2_dir):
    """A driver connected with --address is SIGKILLed after its first parts; a rerun completes."""
    cfg = build(tmp_path, smollm2_dir, backend="fake", chunk_size=4)
    env = {**os.environ, "PIPELINE_FAKE_DELAY": "1", "RAY_USAGE_STATS_ENABLED": "0"}
    address = ray.get_runtime_context().gcs_address
    proc = subprocess.Popen([sys.executable, "-m", "pipeline", "behave", "--config", cfg.source, "--engine", "ray",
                             "--address", address, "--workers", "2", "--paradigm", "fc"],
                            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    directory = paths.behavior_dir(cfg, "m", "fc")
    deadline = time.time() + 90
    while time.time() < deadline and proc.poll() is None and not list(directory.glob("part-*.parquet")):
        time.sleep(0.2)
    assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    before = len(logs.finished_ids(directory))
    assert 0 < before < 36
    assert not Manifest(cfg.run_dir).stage("behave/m/fc")["complete"]
    run_stage("behave", cfg, Options(engine="ray", workers=2, paradigm="fc"))
    assert_complete_without_duplicates(cfg, "fc")
    assert Manifest(cfg.run_dir).stage("behave/m/fc")["complete"]


@pytest.mark.slow
def test_ray_shard_and_local_shard_fill_one_run(cluster, tmp_path, smollm2_dir):
    cfg = build(tmp_path, smollm2_dir, backend="fake", chunk_size=4)
    run_stage("behave", cfg, Options(engine="ray", workers=2, paradigm="fc", shard=(0, 2)))
    directory = paths.behavior_dir(cfg, "m", "fc")
    names = [p.name for p in logs.list_parts(directory)]
    assert names and all(n.startswith("part-000of002-") for n in names)
    assert (logs.finished_ids(directory) % 2 == 0).all()
    assert not Manifest(cfg.run_dir).stage("behave/m/fc")["complete"]
    behave.run(cfg, Options(paradigm="fc", shard=(1, 2)))
    assert_complete_without_duplicates(cfg, "fc")
    assert Manifest(cfg.run_dir).stage("behave/m/fc")["complete"]


def _job(directory: Path, todo: int) -> "ray_behave._Job":
    """A Ray driver's job on a log at `directory` (its record started under a made-up fingerprint)."""
    step = Manifest(directory.parent).step("behave/m/fc", "fp")
    return ray_behave._Job(behave.LogJob(None, "fc", directory, step), todo, todo)


def test_requeue_gives_up_on_a_chunk_that_keeps_killing_workers(tmp_path):
    job = _job(tmp_path / "log", 3)
    chunk = ray_behave._Chunk(job, pa.table({"trial_id": pa.array([7, 8, 9], pa.int64())}))
    queue = ray_behave.deque()
    for _ in range(ray_behave.MAX_CHUNK_ATTEMPTS - 1):
        ray_behave._requeue(queue, chunk, 0, RuntimeError("worker died"))
        assert queue.popleft() is chunk
    with pytest.raises(PipelineError, match=r"trial_ids 7\.\.9"):
        ray_behave._requeue(queue, chunk, 0, RuntimeError("worker died"))


def test_publish_never_writes_a_trial_twice(tmp_path, caplog):
    job = _job(tmp_path / "log", 4)
    recs = [{"trial_id": t, "cue_idx": 0, "cue": "dog", "candidates": ["cat"], "run": None, "attempt": a,
             "attempt_kind": "main", "raw_output": "x", "picks": [], "extracted": [], "status": "empty",
             "final": a == 1, "seed": None, "prompt_sha": "s", "n_prompt_tokens": 1, "n_output_tokens": 1,
             "latency_s": 0.1} for t in (1, 2) for a in (0, 1)]
    first = pa.Table.from_pylist(recs, schema=logs.SCHEMA)
    assert ray_behave._publish(job, first, (0, 1)) == 2
    again = pa.Table.from_pylist(recs[2:] + [{**recs[0], "trial_id": 3}, {**recs[1], "trial_id": 3}],
                                 schema=logs.SCHEMA)
    assert ray_behave._publish(job, again, (0, 1)) == 1
    t = pa.concat_tables([pq.read_table(p) for p in logs.list_parts(job.directory)])
    assert sorted(t.column("trial_id").to_pylist()) == [1, 1, 2, 2, 3, 3]
    assert "already written dropped" in caplog.text


@pytest.mark.slow
def test_engine_that_cannot_start_names_the_model(cluster, tmp_path, tiny_llama_dir):
    cfg = build(tmp_path, tiny_llama_dir)
    cfg.models[0].path = str(tmp_path / "no-such-model")
    with pytest.raises(PipelineError, match="could not start its engine.*no-such-model"):
        run_stage("behave", cfg, Options(engine="ray", workers=1, paradigm="fc"))
    assert logs.list_parts(paths.behavior_dir(cfg, "m", "fc")) == []


@pytest.mark.slow
def test_hidden_fan_out_writes_the_local_files(cluster, tiny_llama_dir, tmp_path, one_thread):
    local = build(tmp_path / "local", tiny_llama_dir)
    hidden.run(local, Options())
    cfg = build(tmp_path / "ray", tiny_llama_dir)
    run_stage("hidden", cfg, Options(engine="ray", workers=2))
    man = Manifest(cfg.run_dir)
    for strategy in ("meaning", "task_fc"):
        got = np.load(paths.hidden_file(cfg, "m", strategy))
        want = np.load(paths.hidden_file(local, "m", strategy))
        assert got.dtype == np.float32 and got.shape == want.shape == (3, len(WORDS), 32)
        np.testing.assert_array_equal(got, want)
        assert man.stage(f"hidden/m/{strategy}")["complete"]
        assert man.stage(f"hidden/m/{strategy}")["inputs"] == Manifest(local.run_dir).stage(f"hidden/m/{strategy}")["inputs"]


def test_ray_driver_completes_a_log_record_once_with_its_engine_figures(tmp_path, smollm2_dir, monkeypatch):
    """The Ray driver finishes a log through `behave.finalize` like a local run: one complete
    of the record, its summary carrying the engine (it used to complete the record, then
    complete it again with the engine added)."""
    cfg = build(tmp_path, smollm2_dir, backend="fake", paradigms=("fc",))
    behave.run(cfg, Options())
    man = Manifest(cfg.run_dir)
    key = "behave/m/fc"
    local = man.summary(key)
    man.start(key, man.stage(key)["inputs"])
    trial_log = behave.open_log(cfg, man, cfg.model("m"), "fc", force=False)
    assert trial_log is not None and trial_log.key == key
    completes = []
    real = Manifest.complete

    def spy(self, k, *a, **kw):
        completes.append(k)
        return real(self, k, *a, **kw)

    monkeypatch.setattr(Manifest, "complete", spy)
    ray_behave._finish(cfg, ray_behave._Job(trial_log, 0, 0), {"name": "ray", "workers": []})
    assert completes == [key]
    rec = man.stage(key)
    assert rec["complete"] and rec["summary"]["engine"] == {"name": "ray", "workers": []}
    assert {k: v for k, v in rec["summary"].items() if k != "engine"} == {k: v for k, v in local.items()
                                                                          if k != "last_run"}

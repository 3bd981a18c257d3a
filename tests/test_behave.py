"""behave stage with the fake backend: plumbing, compliance loop, resume, shards, kill-and-resume."""

from __future__ import annotations

import json
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
from _synthetic import prepare

from pipeline import attempts, behave, logs, paths, trials, vocab
from pipeline.backends import get_backend
from pipeline.backends.fake import FakeBackend
from pipeline.errors import PipelineError
from pipeline.manifest import Manifest, StaleStageError
from pipeline.options import Options
from pipeline.parse import parse_fc
from pipeline.prompts import prompt_sha

ROOT = Path(__file__).resolve().parents[1]


def final_rows(cfg, paradigm, model="m"):
    t = pa.Table.from_batches(list(logs.iter_final(paths.behavior_dir(cfg, model, paradigm))),
                              schema=logs.SCHEMA)
    return t.sort_by("trial_id")


def all_rows(cfg, paradigm, model="m"):
    parts = logs.list_parts(paths.behavior_dir(cfg, model, paradigm))
    return pa.concat_tables([pq.read_table(p) for p in parts]).sort_by([("trial_id", "ascending"),
                                                                      ("attempt", "ascending")])


def fc_table(n=40, seed=0):
    rng = np.random.default_rng(seed)
    words = [f"w{chr(97 + i // 26)}{chr(97 + i % 26)}" for i in range(60)]
    recs = []
    for t in range(n):
        cands = list(rng.choice(words[1:], size=16, replace=False))
        recs.append({"trial_id": t, "cue_idx": 0, "cue": words[0], "group": t, "candidates": cands})
    return pa.Table.from_pylist(recs, schema=trials.FC_SCHEMA)


def test_plumbing_fc_and_fa(make_config):
    cfg = prepare(make_config())
    behave.run(cfg, Options())
    for paradigm in ("fc", "fa"):
        plan = trials.load_trials(cfg, paradigm)
        got = final_rows(cfg, paradigm)
        assert got.column("trial_id").to_pylist() == plan.column("trial_id").to_pylist()
        assert set(got.column("status").to_pylist()) == {"ok"}
        rec = Manifest(cfg.run_dir).stage(f"behave/m/{paradigm}")
        assert rec["complete"] and rec["summary"]["n_trials"] == plan.num_rows
        assert rec["summary"]["compliance"] == 1.0
    fc = final_rows(cfg, "fc")
    assert all(p == c[:2] for p, c in zip(fc.column("picks").to_pylist(), fc.column("candidates").to_pylist()))
    assert fc.column("run").null_count == fc.num_rows and fc.column("seed").null_count == fc.num_rows
    fa = final_rows(cfg, "fa")
    plan = trials.load_trials(cfg, "fa")
    assert fa.column("seed").to_pylist() == [attempts.derive_seed(s, c) for s, c in zip(
        plan.column("seed").to_pylist(), plan.column("cue_idx").to_pylist())]
    assert fa.column("candidates").null_count == fa.num_rows
    assert fa.column("run").to_pylist() == plan.column("run").to_pylist()
    # A second run has nothing to do.
    before = sorted(p.name for p in paths.behavior_dir(cfg, "m", "fc").iterdir())
    behave.run(cfg, Options())
    assert sorted(p.name for p in paths.behavior_dir(cfg, "m", "fc").iterdir()) == before


def test_compliance_loop_attempts_and_statuses(make_config):
    cfg = make_config()
    fake = FakeBackend(fail=True)
    chunk = fc_table(60)
    out = attempts.run_chunk(fake, cfg, cfg.models[0], "fc", chunk)
    assert logs.conform(out).num_rows == out.num_rows
    by_trial: dict[int, list[dict]] = {}
    for r in out.to_pylist():
        by_trial.setdefault(r["trial_id"], []).append(r)
    assert sorted(by_trial) == list(range(60))
    kinds_seen = set()
    for tid, rs in by_trial.items():
        assert [r["attempt"] for r in rs] == list(range(len(rs)))
        assert [r["final"] for r in rs] == [False] * (len(rs) - 1) + [True]
        assert [r["attempt_kind"] for r in rs] == ["main", "repair", "retry", "retry", "retry", "retry",
                                                   "retry"][:len(rs)]
        for r in rs[:-1]:
            assert r["status"] != "ok"
        for r in rs:
            cands = chunk.column("candidates")[tid].as_py()
            p = parse_fc(r["raw_output"], r["cue"], cands)
            assert (p.picks, p.status) == (r["picks"], r["status"])
            if r["attempt"] < 2:
                assert r["seed"] is None
            else:
                assert r["seed"] == attempts.derive_seed(cfg.trials.fc_seed, tid, r["attempt"])
        if rs[-1]["status"] != "ok":
            assert len(rs) == 7
            kinds_seen.add("exhausted")
        elif len(rs) > 2:
            kinds_seen.add("fixed_by_retry")
        kinds_seen.add(rs[0]["status"])
    assert {"ok", "unparseable", "cue_repeat", "empty", "exhausted", "fixed_by_retry"} <= kinds_seen
    # Every repair/retry quotes the latest bad answer, stripped as the authors do.
    latest = {}
    for req in fake.requests:
        text = req.text
        tid = next(t for t in range(60) if f"candidates: [{', '.join(chunk.column('candidates')[t].as_py())}]" in text)
        if "Your previous answer was:" in text:
            assert f"Your previous answer was:\n{latest[tid].strip()}\n\n" in text
        latest[tid] = next(r["raw_output"] for r in by_trial[tid] if r["prompt_sha"] == prompt_sha(text))


def test_compliance_loop_without_repair_and_retry_overrides(make_config):
    cfg = make_config(behave={"repair": False, "retries": 2, "retry_temperature": 0.3},
                      models=[{"name": "m", "path": "x", "retry_top_p": 0.8}])
    fake = FakeBackend(fail=True)
    out = attempts.run_chunk(fake, cfg, cfg.models[0], "fc", fc_table(30)).to_pylist()
    assert {r["attempt"] for r in out} <= {0, 2, 3}
    assert {r["attempt_kind"] for r in out if r["attempt"] > 0} <= {"retry"}
    sampled = [q for q in fake.requests if not q.greedy]
    assert sampled and all(q.temperature == 0.3 and q.top_p == 0.8 and q.seed is not None for q in sampled)
    assert all(q.max_tokens == cfg.behave.fc_max_tokens and q.allowed_regex is None for q in fake.requests)


def test_structured_requests(make_config):
    import re
    cfg = make_config(behave={"structured_fc": True, "structured_fa": True})
    chunk = fc_table(3)
    regex_only = FakeBackend()
    attempts.run_chunk(regex_only, cfg, cfg.models[0], "fc", chunk)
    assert regex_only.requests[0].allowed_regex and regex_only.requests[0].allowed_choices is None
    fake = FakeBackend()
    fake.structured = "choices"  # a backend that constrains by choice lists (hf) gets them too
    attempts.run_chunk(fake, cfg, cfg.models[0], "fc", chunk)
    req = fake.requests[0]
    cands = chunk.column("candidates")[0].as_py()
    rx = re.compile(req.allowed_regex)
    assert rx.fullmatch(f"output: {cands[3]}, {cands[7]}")
    assert not rx.fullmatch(f"output: {cands[3]}, {cands[3]}")
    assert not rx.fullmatch("output: waa, " + cands[0])
    assert len(req.allowed_choices) == 16 * 15 and all(rx.fullmatch(c) for c in req.allowed_choices)
    assert req.max_tokens >= 32
    fa = re.compile(attempts.fa_regex(5))
    assert fa.fullmatch("output: bark, leash, pet, animal, cat.")
    assert not fa.fullmatch("output: bark, leash, pet, animal.")
    assert not fa.fullmatch("output: Bark, leash, pet, animal, cat.")


def test_limit_then_resume_and_status_summary(make_config):
    cfg = prepare(make_config(behave={"chunk_size": 4}))
    os.environ["PIPELINE_FAKE_FAIL"] = "1"
    try:
        behave.run(cfg, Options(paradigm="fc", limit=10))
        assert len(logs.finished_ids(paths.behavior_dir(cfg, "m", "fc"))) == 10
        assert not Manifest(cfg.run_dir).stage("behave/m/fc")["complete"]
        behave.run(cfg, Options(paradigm="fc"))
    finally:
        del os.environ["PIPELINE_FAKE_FAIL"]
    plan = trials.load_trials(cfg, "fc")
    got = final_rows(cfg, "fc")
    assert got.column("trial_id").to_pylist() == plan.column("trial_id").to_pylist()
    s = Manifest(cfg.run_dir).stage("behave/m/fc")["summary"]
    statuses = got.column("status").to_pylist()
    assert s["status"] == {k: statuses.count(k) for k in set(statuses)}
    assert s["compliance"] == round(statuses.count("ok") / len(statuses), 4)
    assert sum(s["ok_by_attempt"].values()) == statuses.count("ok")


def test_shards_fill_one_run(make_config):
    cfg = prepare(make_config())
    behave.run(cfg, Options(paradigm="fa", shard=(1, 3)))
    behave.run(cfg, Options(paradigm="fa", shard=(0, 3)))
    assert not Manifest(cfg.run_dir).stage("behave/m/fa")["complete"]
    behave.run(cfg, Options(paradigm="fa", shard=(2, 3)))
    assert Manifest(cfg.run_dir).stage("behave/m/fa")["complete"]
    ids = final_rows(cfg, "fa").column("trial_id").to_numpy()
    assert len(ids) == len(np.unique(ids)) == trials.load_trials(cfg, "fa").num_rows
    names = {p.name.split("-")[1] for p in logs.list_parts(paths.behavior_dir(cfg, "m", "fa"))}
    assert names == {"000of003", "001of003", "002of003"}


def test_changed_inputs_refuse_then_force_moves_old_logs_aside(make_config):
    cfg = prepare(make_config())
    behave.run(cfg, Options(paradigm="fa"))
    cfg2 = make_config(behave={"fa_temperature": 0.9})
    with pytest.raises(StaleStageError, match="behave/m/fa"):
        behave.run(cfg2, Options(paradigm="fa"))
    behave.run(cfg2, Options(paradigm="fa", force=True))
    stale = [p for p in paths.behavior_dir(cfg, "m", "fa").parent.iterdir() if ".stale-" in p.name]
    assert len(stale) == 1 and logs.list_parts(stale[0])
    assert Manifest(cfg.run_dir).stage("behave/m/fa")["complete"]


def test_missing_model_names_model_and_fix(make_config, tmp_path):
    cfg = prepare(make_config(behave={"backend": "hf"},
                              models=[{"name": "tiny", "path": str(tmp_path / "models" / "smollm2-135m-instruct")}]))
    with pytest.raises(PipelineError, match="model 'tiny'.*make model"):
        behave.run(cfg, Options(paradigm="fa"))
    cfg = make_config(models=[{"name": "big", "path": str(tmp_path / "nope")}])
    with pytest.raises(PipelineError, match="model 'big'.*models\\[0\\].path"):
        get_backend("vllm", cfg.models[0], cfg)


def test_second_writer_is_refused(make_config):
    cfg = prepare(make_config())
    with logs.WriterLock(paths.behavior_dir(cfg, "m", "fc")):
        with pytest.raises(PipelineError, match=r"\.writer\.lock.*pid"):
            # Same process, separate open file: flock conflicts exactly as with another process.
            behave.run(cfg, Options(paradigm="fc"))


# ---------- self-healing logs and hostile outputs ----------

def test_finished_log_that_lost_a_part_reruns_exactly_its_trials(make_config, monkeypatch):
    from pipeline import aggregate

    cfg = prepare(make_config(behave={"chunk_size": 16}))
    behave.run(cfg, Options(paradigm="fc"))
    d = paths.behavior_dir(cfg, "m", "fc")
    parts = logs.list_parts(d)
    before = final_rows(cfg, "fc")
    lost = parts[1]
    lost_ids = set(pq.read_table(lost).column("trial_id").to_pylist())
    lost.rename(lost.with_name(lost.name + ".bad"))  # what a corrupt-part message advises
    with pytest.raises(PipelineError, match=rf"{lost.name}.*behave --config test\.toml --model m --paradigm fc"):
        aggregate.aggregate_one(cfg, "m", "fc", vocab.load_run_vocab(cfg))
    asked = []
    real = FakeBackend.generate
    monkeypatch.setattr(FakeBackend, "generate", lambda self, reqs: asked.extend(reqs) or real(self, reqs))
    behave.run(cfg, Options(paradigm="fc", force=True))
    assert len(asked) == len(lost_ids)
    after = final_rows(cfg, "fc")
    assert after.column("trial_id").to_pylist() == before.column("trial_id").to_pylist()
    assert after.column("picks").to_pylist() == before.column("picks").to_pylist()
    assert Manifest(cfg.run_dir).stage("behave/m/fc")["complete"]
    assert aggregate.aggregate_one(cfg, "m", "fc", vocab.load_run_vocab(cfg))["trials"] == before.num_rows
    asked.clear()
    behave.run(cfg, Options(paradigm="fc"))
    assert asked == []


def test_deleted_log_folder_is_run_again(make_config):
    import shutil

    cfg = prepare(make_config())
    behave.run(cfg, Options(paradigm="fa"))
    shutil.rmtree(paths.behavior_dir(cfg, "m", "fa"))
    behave.run(cfg, Options(paradigm="fa"))
    assert final_rows(cfg, "fa").num_rows == trials.load_trials(cfg, "fa").num_rows
    assert Manifest(cfg.run_dir).stage("behave/m/fa")["complete"]


def test_lone_surrogates_are_stored_escaped(make_config, monkeypatch):
    cfg = prepare(make_config(behave={"chunk_size": 8}))
    monkeypatch.setattr(FakeBackend, "_fc", lambda self, text, r: "output: \udc80bad, \ud800")
    monkeypatch.setattr(FakeBackend, "_fa", lambda self, text, r: "output: caf\udce9, x.")
    behave.run(cfg, Options())
    fc = all_rows(cfg, "fc")
    assert set(fc.column("raw_output").to_pylist()) == {"output: \\udc80bad, \\ud800"}
    assert set(final_rows(cfg, "fc").column("status").to_pylist()) == {"unparseable"}
    assert final_rows(cfg, "fa").column("raw_output")[0].as_py() == "output: caf\\udce9, x."
    assert Manifest(cfg.run_dir).stage("behave/m/fc")["complete"]


def test_unicode_vocabulary_answers_are_parsed(make_config, tmp_path):
    from pipeline import aggregate

    words = ["café", "zoë", "e-mail", "o'clock", "東京", "naïve", "façade", "jalapeño"] + \
        [f"mot{c}" for c in "abcdefghijkl"]
    src = tmp_path / "uni.txt"
    src.write_text("\n".join(words) + "\n", encoding="utf-8")
    cfg = prepare(make_config(vocab={"source": str(src), "size": len(words)}, behave={"paradigms": ["fc"]}))
    behave.run(cfg, Options())
    got = final_rows(cfg, "fc")
    assert set(got.column("status").to_pylist()) == {"ok"}
    stats = aggregate.aggregate_one(cfg, "m", "fc", words)
    assert stats["masked_rows"] == 0 and stats["picks"] == 2 * got.num_rows
    counts = aggregate.load_matrices(cfg, "m", "fc")["counts"]
    assert counts[words.index("zoë")].sum() > 0


# ---------- kill and resume through the CLI ----------

def _write_config(tmp_path: Path, data_dir: Path, backend: str, model: str, fa_runs: int) -> Path:
    words = tmp_path / "words.txt"
    words.write_text("\n".join(f"word{chr(97 + i // 26)}{chr(97 + i % 26)}" for i in range(24)) + "\n")
    cfg = tmp_path / f"{data_dir.name}.toml"
    cfg.write_text(f"""
[experiment]
name = "k"
data_dir = "{data_dir}"
[vocab]
source = "{words}"
size = 24
[trials]
fa_runs = {fa_runs}
[behave]
backend = "{backend}"
chunk_size = 3
batch_size = 4
fc_max_tokens = 6
fa_max_tokens = 6
[[models]]
name = "m"
path = "{model}"
dtype = "float32"
""")
    return cfg


def _cli(cfg: Path, *args, env=None, **kw):
    return subprocess.Popen([sys.executable, "-m", "pipeline", *args, "--config", str(cfg)], cwd=ROOT,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kw)


def _n_parts(d: Path) -> int:
    return len(list(d.rglob("part-*.parquet"))) if d.exists() else 0


def _kill_and_resume(tmp_path: Path, backend: str, model: str, env: dict, slow_env: dict,
                     fa_runs: int) -> None:
    """Run once uninterrupted and once SIGKILLed three times then resumed; logs must agree.

    24 words give 48 FC trials (16 parts of 3) and 24 x fa_runs FA trials (8 x fa_runs parts).
    """
    n_trials = {"fc": 48, "fa": 24 * fa_runs}
    runs = {}
    for name in ("ref", "killed"):
        cfg = _write_config(tmp_path, tmp_path / name, backend, model, fa_runs)
        for stage in ("vocab", "trials"):
            p = _cli(cfg, stage, env=env)
            assert p.wait(300) == 0, p.stdout.read()
        runs[name] = cfg
    p = _cli(runs["ref"], "behave", env=env)
    out, _ = p.communicate(timeout=600)
    assert p.returncode == 0, out

    behavior = tmp_path / "killed" / "k" / "behavior"
    kills = 0
    for wait_parts in (2, 6, 10):
        before = _n_parts(behavior)
        p = _cli(runs["killed"], "behave", env=slow_env)
        deadline = time.time() + 300
        while _n_parts(behavior) < before + wait_parts and p.poll() is None and time.time() < deadline:
            time.sleep(0.02)
        time.sleep(0.01 * kills)
        if p.poll() is None:
            p.send_signal(signal.SIGKILL)
            kills += 1
        p.wait(30)
    assert kills >= 2
    assert _n_parts(behavior) < 16 + 8 * fa_runs  # FA (after FC's 16 parts) is unfinished
    (behavior / "m" / "fa" / ".tmp-part-000of001-1-1.parquet").write_bytes(b"half a part")
    p = _cli(runs["killed"], "behave", env=env)
    out, _ = p.communicate(timeout=600)
    assert p.returncode == 0, out
    assert not list(behavior.rglob(".tmp-*"))

    for paradigm in ("fc", "fa"):
        ref_dir = tmp_path / "ref" / "k" / "behavior" / "m" / paradigm
        got_dir = behavior / "m" / paradigm
        ref = pa.concat_tables([pq.read_table(x) for x in logs.list_parts(ref_dir)])
        got = pa.concat_tables([pq.read_table(x) for x in logs.list_parts(got_dir)])
        key = [("trial_id", "ascending"), ("attempt", "ascending")]
        ref, got = ref.sort_by(key), got.sort_by(key)
        fids = got.filter(got.column("final")).column("trial_id").to_pylist()
        assert len(fids) == len(set(fids))
        assert sorted(fids) == list(range(n_trials[paradigm]))
        cols = ["trial_id", "attempt", "raw_output", "picks", "status", "final", "seed", "prompt_sha",
                "n_prompt_tokens", "n_output_tokens"]
        assert got.select(cols).equals(ref.select(cols))
        man = json.loads((tmp_path / "killed" / "k" / "manifest.json").read_text())
        assert man["stages"][f"behave/m/{paradigm}"]["complete"]


def test_kill_and_resume_matches_uninterrupted_run(tmp_path):
    env = {**os.environ, "PIPELINE_FAKE_FAIL": "1", "HF_HUB_OFFLINE": "1"}
    _kill_and_resume(tmp_path, "fake", "unused", env, {**env, "PIPELINE_FAKE_DELAY": "0.05"}, fa_runs=4)


@pytest.mark.slow
def test_kill_and_resume_real_model(tmp_path, tiny_llama_dir):
    """Same with transformers on a tiny random Llama: garbage answers run the whole repair loop."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    _kill_and_resume(tmp_path, "hf", str(tiny_llama_dir), env, env, fa_runs=2)


def test_requests_name_their_stage_and_logs_fingerprint_their_own_eos(make_config):
    """Each request says its paradigm, so a backend can apply that paradigm's EOS set and
    tokenizer (METHOD.md §2: the authors' scripts differed, e.g. Qwen's FA terminators); a
    log's fingerprint holds only its own paradigm's settings."""
    from pipeline import scored

    cfg = make_config()
    fake = FakeBackend()
    attempts.run_chunk(fake, cfg, cfg.models[0], "fc", fc_table(3))
    assert {r.stage for r in fake.requests} == {"fc"}
    fake = FakeBackend()
    fa = trials.build_fa_plan(["dog", "cat"], 2, 12345)
    attempts.run_chunk(fake, cfg, cfg.models[0], "fa", fa)
    assert {r.stage for r in fake.requests} == {"fa"}
    assert {r.stage for r in scored.requests(fake, cfg, cfg.models[0], fc_table(2).to_pylist(), "fc_scored")} == {"fc_scored"}
    a = prepare(make_config(models=[{"name": "m", "path": "x", "extra_eos": {"fc": ["<a>"], "fa": ["<b>"]}}]))
    b = make_config(models=[{"name": "m", "path": "x", "extra_eos": {"fc": ["<a>", "<c>"], "fa": ["<b>"]},
                             "fix_mistral_regex": ["fc"]}])
    fp = {(i, p): behave.behave_inputs(c, c.models[0], p) for i, c in enumerate((a, b)) for p in ("fc", "fa")}
    assert fp[0, "fa"] == fp[1, "fa"] and fp[0, "fc"] != fp[1, "fc"]
    assert fp[1, "fc"]["fix_mistral_regex"] is True and "fix_mistral_regex" not in fp[1, "fa"]

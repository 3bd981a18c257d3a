"""Triplet odd-one-out (`pipeline.paradigms.triplet`): the plan's balance, the parse, the
similarity by hand, config keys, and one run through behave (fake backend), aggregate, rsa,
regress and export."""

from __future__ import annotations

import collections
import re

import _synthetic as syn
import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from pipeline import aggregate, behave, export, keys, logs, paths, regress, report, rsa, trials, validity
from pipeline.backends.base import GenResult, ScoreResult
from pipeline.backends.fake import FakeBackend
from pipeline.config import ConfigError
from pipeline.manifest import Manifest
from pipeline.options import Options
from pipeline.paradigms import get
from pipeline.paradigms.triplet import (
    CHANCE,
    build_triplet_plan,
    pair_shares,
    parse_triplet,
    share_matrix,
    triplet_regex,
)

# ---------------------------------------------------------------- plan


@pytest.mark.parametrize("n,per_word", [(48, 24), (47, 24), (50, 10), (10, 3)])
def test_plan_is_balanced(n, per_word):
    words = [f"w{i}" for i in range(n)]
    plan = build_triplet_plan(words, per_word, seed=7)
    cands = plan.column("candidates").to_pylist()
    assert plan.num_rows == -(-n * per_word // 3)
    assert all(len(set(c)) == 3 for c in cands)
    shown = collections.Counter(w for c in cands for w in c)
    assert set(shown) == set(words) and max(shown.values()) - min(shown.values()) <= 1
    pairs = collections.Counter(frozenset(p) for c in cands for p in ((c[0], c[1]), (c[0], c[2]), (c[1], c[2])))
    all_pairs = n * (n - 1) // 2
    mean = 3 * plan.num_rows / all_pairs
    spread = [pairs.get(frozenset((a, b)), 0) for i, a in enumerate(words) for b in words[i + 1:]]
    assert max(spread) - min(spread) <= 3 and np.std(spread) < 0.6 * max(mean, 1)
    if mean >= 1:  # once every pair can be covered, nearly all are
        assert sum(s == 0 for s in spread) < 0.1 * all_pairs
    assert plan.column("cue").to_pylist() == [c[0] for c in cands]
    assert plan.column("trial_id").to_pylist() == list(range(plan.num_rows))


def test_plan_is_seeded_and_positions_vary():
    words = [f"w{i}" for i in range(30)]
    a, b = build_triplet_plan(words, 6, 1), build_triplet_plan(words, 6, 1)
    assert a.equals(b)
    assert not a.equals(build_triplet_plan(words, 6, 2))
    first = collections.Counter(c[0] for c in a.column("candidates").to_pylist())
    assert len(first) > 20  # no word is always shown first


def test_plan_stage_and_fingerprint(make_config):
    cfg = syn.prepare(make_config(behave={"paradigms": ["triplet"]}, trials={"triplet_trials": 4}))
    plan = trials.load_trials(cfg, "triplet")
    assert plan.num_rows == -(-20 * 4 // 3)
    assert trials.plan_inputs(cfg, "triplet", ["a"])["triplet_trials"] == 4
    assert trials.plan_of("triplet_scored") == "triplet"


def test_config_keys_are_typed_and_refused_in_paper_mode(make_config):
    cfg = make_config(behave={"paradigms": ["fc", "triplet"], "structured_triplet": True})
    assert cfg.trials.triplet_trials == 24 and cfg.behave.structured_triplet is True
    assert cfg.to_dict()["trials"]["triplet_seed"] == 12345
    assert "triplet_seed" not in make_config().to_dict()["trials"]
    with pytest.raises(ConfigError, match=r"'trials\.triplet_trials' must be int"):
        make_config(trials={"triplet_trials": "many"})
    with pytest.raises(ConfigError, match=r"'trials\.triplet_trials' = 0 must be at least 1"):
        make_config(behave={"paradigms": ["triplet"]}, trials={"triplet_trials": 0})
    with pytest.raises(ConfigError, match=r"unknown key 'trials\.triplet_trails'; did you mean 'trials\.triplet_trials'"):
        make_config(trials={"triplet_trails": 3})
    with pytest.raises(ConfigError, match="paper mode runs only the paper's protocol, which has no triplets"):
        make_config(experiment={"name": "t", "paper_mode": True}, behave={"paradigms": ["fc", "triplet"]})


# ---------------------------------------------------------------- parse

WORDS3 = ["dog", "cat", "violin"]


@pytest.mark.parametrize("text,status,picks", [
    ("output: violin", "ok", ["violin"]),
    ("output: Violin.", "ok", ["violin"]),
    ("The odd one is...\noutput: **violin**", "ok", ["violin"]),
    ("violin", "ok", ["violin"]),
    ("output: dog\noutput: cat", "ok", ["cat"]),
    ("", "empty", []),
    ("   \n ", "empty", []),
    (None, "empty", []),
    ("output: ???", "unparseable", []),
    ("output: dog, cat", "wrong_count", []),
    ("output: dog and violin", "wrong_count", []),
    ("output: piano", "not_in_list", []),
    ("output: the violin", "not_in_list", []),
])
def test_parse(text, status, picks):
    got = parse_triplet(text, WORDS3)
    assert (got.status, got.picks) == (status, picks)


def test_structured_regex_takes_exactly_the_three_words():
    pat = re.compile(triplet_regex(["e-mail", "cat", "dog"]))
    assert pat.fullmatch("output: e-mail") and pat.fullmatch("output: dog")
    assert not pat.fullmatch("output: cow") and not pat.fullmatch("output: dog, cat")


def test_requests_prompt_repair_and_retry_seeds(make_config):
    cfg = syn.prepare(make_config(behave={"paradigms": ["triplet"], "structured_triplet": True},
                                  trials={"triplet_trials": 1}))
    trial = trials.load_trials(cfg, "triplet").to_pylist()[0]
    proto = get("triplet").protocol(FakeBackend(), cfg, cfg.models[0])
    req, _, seed = proto.request(trial, 0, None)
    assert req.text.endswith(f"words: [{', '.join(trial['candidates'])}]\noutput: \n<assistant>\n")
    assert req.temperature == 0 and seed is None and req.allowed_regex == triplet_regex(trial["candidates"])
    assert req.max_tokens >= 16 and req.stage == "triplet"
    repair, _, _ = proto.request(trial, 1, "  no idea ")
    assert "Your previous answer was:\nno idea\n" in repair.text and repair.temperature == 0
    retry, _, seed = proto.request(trial, 2, "no idea")
    assert retry.temperature > 0 and seed is not None and seed == proto.request(trial, 2, "x")[2]
    assert proto.next_attempt(0, "not_in_list") == 1 and proto.next_attempt(0, "ok") is None
    assert proto.next_attempt(1 + cfg.behave.retries, "empty") is None


# ---------------------------------------------------------------- similarity by hand

def test_shares_by_hand():
    # words 0..3; triplets (0,1,2) odd 2, (0,1,3) odd 3, (0,2,3) odd 0
    idx = np.array([[0, 1, 2], [0, 1, 3], [0, 2, 3]])
    odd = np.array([2, 2, 0])
    kept, shown = pair_shares(idx, odd, 4)
    assert kept[0, 1] == 2 and kept[2, 3] == 1 and kept[0, 2] == 0 and kept[1, 2] == 0
    assert shown[0, 1] == 2 and shown[0, 2] == 2 and shown[0, 3] == 3 - 1 and shown[1, 2] == 1 and shown[1, 3] == 1
    sim = share_matrix(kept, shown, np.ones(4, dtype=bool))
    # pair (0,1): kept in both triplets holding it; (0,2): 0 of 2; (2,3): 1 of 1; (1,2): 0 of 1
    assert sim[0, 1] == 1.0 and sim[0, 2] == 0.0 and sim[2, 3] == 1.0 and sim[1, 2] == 0.0
    assert sim[0, 3] == pytest.approx(0.0) and sim[1, 3] == 0.0
    assert (sim == sim.T).all() and (np.diag(sim) == 1).all()
    unseen = share_matrix(np.zeros((4, 4)), np.zeros((4, 4)), np.array([True, True, True, False]))
    assert unseen[0, 1] == pytest.approx(CHANCE) and np.isnan(unseen[3]).all() and np.isnan(unseen[:, 3]).all()
    half = share_matrix(kept, shown, np.ones(4, dtype=bool), unseen=np.nan)
    assert np.isnan(half[1, 3]) == (shown[1, 3] == 0) and half[0, 1] == 1.0


def test_scored_shares_by_hand():
    idx = np.array([[0, 1, 2], [0, 1, 2]])
    w = np.array([[0.2, 0.3, 0.5], [0.6, 0.2, 0.2]])  # probability that position k is the odd one
    kept, shown = pair_shares(idx, None, 3, w)
    assert kept[0, 1] == pytest.approx(0.5 + 0.2) and kept[1, 2] == pytest.approx(0.2 + 0.6)
    assert kept[0, 2] == pytest.approx(0.3 + 0.2) and shown[0, 1] == 2
    sim = share_matrix(kept, shown, np.ones(3, dtype=bool))
    assert sim[0, 1] == pytest.approx(0.35) and sim[1, 2] == pytest.approx(0.4)


# ---------------------------------------------------------------- end to end (fake backend)

def _odd(words, z, index):
    ids = [index[w] for w in words]
    aff = z[ids] @ z[ids].T
    return int(np.argmax([aff[1, 2], aff[0, 2], aff[0, 1]]))  # the one outside the most similar pair


@pytest.fixture
def triplet_run(make_config, monkeypatch):
    cfg = syn.config(make_config, behave={"paradigms": ["fc", "fa", "triplet", "triplet_scored"]},
                     trials={"fc_candidates": 4, "fa_runs": 6, "triplet_trials": 30},  # each half covers every pair
                     rsa={"references": ["fc", "fa", "triplet", "triplet_scored", "static", "encoder", "consensus"],
                          "bootstrap": 0})
    data = syn.build(cfg)
    index = {w: i for i, w in enumerate(data["words"])}
    shown = re.compile(r"words: \[([^\]]*)\]")
    calls = collections.Counter()

    def generate(self, reqs):
        out = []
        for r in reqs:
            calls["main" if r.temperature == 0 and "invalid" not in r.text else "repair"] += 1
            ws = [w.strip() for w in shown.findall(r.text)[-1].split(",")]
            first = "invalid" not in r.text and index[ws[0]] % 5 == 0
            ans = "I cannot decide" if first else f"output: {ws[_odd(ws, data['z'], index)]}"
            out.append(GenResult(text=ans, n_prompt_tokens=50, n_output_tokens=3))
        return out

    def score(self, reqs):
        out = []
        for r in reqs:
            ws = [c.strip() for c in r.continuations]
            ids = [index[w] for w in ws]
            aff = data["z"][ids] @ data["z"][ids].T
            kept = np.array([aff[1, 2], aff[0, 2], aff[0, 1]])
            out.append(ScoreResult(logprobs=list(kept - 4 - 0.3 * np.arange(3)), n_tokens=[2, 2, 2],
                                   n_prompt_tokens=50))
        return out

    monkeypatch.setattr(FakeBackend, "generate", generate)
    monkeypatch.setattr(FakeBackend, "score", score)
    trials.run(cfg, Options())
    for p in ("triplet", "triplet_scored"):
        behave.run(cfg, Options(paradigm=p))
    aggregate.run(cfg, Options())
    return cfg, data, calls


def test_end_to_end_on_the_fake_backend(triplet_run):
    cfg, data, calls = triplet_run
    words, n = data["words"], len(data["words"])
    plan = trials.load_trials(cfg, "triplet")
    summary = Manifest(cfg.run_dir).summary(keys.behave("m1", "triplet"))
    assert summary["n_trials"] == plan.num_rows and summary["compliance"] == 1.0
    assert summary["first_try_ok"] < 1.0 and calls["repair"] > 0  # the repair prompt fixed the bad answers
    final = logs.iter_final(paths.behavior_dir(cfg, "m1", "triplet"), ["candidates", "picks", "status"])
    table = pa.Table.from_batches(list(final))
    kept, seen = np.zeros((n, n)), np.zeros((n, n))
    index = {w: i for i, w in enumerate(words)}
    for cands, picks in zip(table.column("candidates").to_pylist(), table.column("picks").to_pylist()):
        ids = [index[w] for w in cands]
        rest = [i for w, i in zip(cands, ids) if w != picks[0]]
        kept[rest[0], rest[1]] += 1
        kept[rest[1], rest[0]] += 1
        for a in ids:
            for b in ids:
                seen[a, b] += a != b
    want = np.where(seen > 0, kept / np.maximum(seen, 1), CHANCE)
    np.fill_diagonal(want, 1)
    sim = np.load(paths.matrix_file(cfg, "m1", "triplet", "sim_ppmi"))
    assert np.allclose(sim, want, atol=1e-6)
    assert np.array_equal(sim, np.load(paths.matrix_file(cfg, "m1", "triplet", "sim_counts")))
    stats = aggregate.load_matrices(cfg, "m1", "triplet")["stats"]
    assert stats["picks"] == plan.num_rows and "_shown" not in stats and stats["uncovered_pairs"] < 0.2 * n * n / 2

    rsa.run(cfg, Options())
    df = pd.read_parquet(paths.result_table(cfg, "rsa"))
    for ref in ("triplet", "triplet_scored"):
        got = df[(df.reference == ref) & (df.method == "spearman")]
        assert len(got) == 2 * 2 * 4 and got.rsa.mean() > 0.2  # the synthetic hidden states share the geometry
    nn = pd.read_parquet(paths.result_table(cfg, "nn"))
    assert {"triplet", "triplet_scored"} <= set(nn.reference)
    rel = pd.read_parquet(paths.result_table(cfg, "reliability"))
    assert (rel[rel.paradigm.isin(["triplet", "triplet_scored"])].reliability > 0.3).all()
    regress.run(cfg, Options())
    reg = pd.read_parquet(paths.result_table(cfg, "regression"))
    assert {"base+cross+triplet", "base+cross+triplet_scored"} <= set(reg.feature_set)
    export.run(cfg, Options())
    assert (paths.export_dir(cfg) / "m1" / "triplet_ppmi.npz").exists()
    validity.run(cfg, Options())
    plan = pd.read_parquet(paths.result_table(cfg, "validity_plan"))
    assert set(plan[plan.paradigm == "triplet"].unit) == {"triplet_trials"}
    report.run(cfg, Options())
    md = (paths.report_dir(cfg) / "report.md").read_text()
    assert "| triplet | triplet_scored |" in md and "triplet_gain_peak" in md


def test_scored_counts_are_position_debiased(triplet_run):
    cfg, data, _ = triplet_run
    stats = aggregate.load_matrices(cfg, "m1", "triplet_scored")["stats"]
    prior = stats["position_prior"]
    assert stats["scored_counts"] == "debiased" and prior[0] > prior[1] > prior[2]  # the fake's -0.3 per slot
    assert get("triplet_scored").scoring and get("triplet_scored").plan_name == "triplet"


# ---------------------------------------------------------------- real vLLM (SmolLM2)

@pytest.mark.slow
def test_vllm_answers_and_scores_a_few_triplets(make_config, vllm_f32):
    """Structured answers on SmolLM2 are one of the three words; scores are distributions."""
    cfg = syn.prepare(make_config(behave={"paradigms": ["triplet", "triplet_scored"], "structured_triplet": True},
                                  trials={"triplet_trials": 1}))
    plan = trials.load_trials(cfg, "triplet").slice(0, 6).to_pylist()
    mc = cfg.models[0]
    rows = get("triplet").run_chunk(vllm_f32, cfg, mc, plan).to_pylist()
    final = [r for r in rows if r["final"]]
    assert len(final) == 6 and all(r["status"] == "ok" and r["picks"][0] in r["candidates"] for r in final)
    scored = get("triplet_scored").run_chunk(vllm_f32, cfg, mc, plan).to_pylist()
    assert all(r["status"] == "ok" and sum(r["probs"]) == pytest.approx(1, abs=1e-5) for r in scored)

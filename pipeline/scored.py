"""Scored forced choice (`fc_scored`): the FC trials, answered by the model's probabilities.

Each FC trial (same plan, same prompt, METHOD.md §2) is not decoded but scored: for every
candidate c, the log-probability that the answer, after the rendered prompt and the answer
prefix ``output:`` the prompt's format line asks for, continues with `` c,``, i.e. that c is
the first pick and the word ends there. The scored text is ``output: c,`` rather than the
bare word because the comma marks the word boundary: " car," and " cart," are different
token sequences, while " car" alone is the start of " carpet". With ``trials.fc_picks = 1``
the answer ends after the word, so the end-of-sequence token is scored instead of the comma.
Multi-token candidates are scored exactly, every token given the prompt and the tokens
before it (`backends.base.continuation_ids`; vLLM and hf compute it differently, with the
same result).

The log keeps, per candidate, the summed log-probability and the distribution over the
trial's candidates as the first pick (the log-probabilities normalized over the trial:
the probability mass outside the candidates, `mass`, is reported separately).
`aggregate` turns the distributions into counts (`behave.scored_counts`): ``"debiased"``
(the default outside paper mode) removes the list-position prior first (`PositionPrior`,
`debias`) and then adds each candidate's corrected probability; ``"expected"`` adds each
candidate's first-pick probability as it is; ``"top"`` counts the `fc_picks` most probable
candidates once each, as generated FC picks do.

Position-prior debiasing (PriDe, Zheng et al., ICLR 2024). The observed first-pick
distribution is modelled as P_obs(i) ∝ prior(position of i) · P(content of i); each trial's
probabilities are divided by the prior and renormalized (`debias`). The FC plan assigns
candidates to positions at random (the seeded shuffle, plus the rotations of
`trials.fc_orders`), so averaging over the counted trials, position by position, removes
the content and leaves the prior (`PositionPrior`), per list length (groups of 16 and of 15
candidates have their own), from the very trials being counted (each half of the split-half
reliability estimates its own). `behave.scored_prior` chooses the average: ``"mean"``
(default), the mean first-pick probability at each position, normalized; ``"log"``, PriDe's
own form, the softmax of the mean log-probability, which is exact when the prior is purely
multiplicative but is dominated by the far tail (candidates at log-probability -20) and is
noisy on a few hundred trials. Measured on the demo's 144 scored trials (README), the mean
gave split-half r_SB 0.088 against 0.002 and RSA with MiniLM 0.090 against 0.038.
"""

from __future__ import annotations

import time
from collections import Counter

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from . import logs, paths
from .backends import Backend, ScoreRequest, scoring_names
from .config import Config, ModelCfg
from .errors import PipelineError
from .prompts import chat_messages, fc_prompt, prompt_sha

ANSWER_PREFIX = "output:"
"""The answer text every candidate is scored after (the FC prompt's format line)."""
SCORE_VERSION = 1


def answer(candidate: str, n_picks: int) -> str:
    """The text scored after `ANSWER_PREFIX` for one candidate: `` c,`` (the first of several
    picks), or `` c`` followed by the end of the answer when there is a single pick."""
    return f" {candidate}," if n_picks > 1 else f" {candidate}"


def requests(backend: Backend, cfg: Config, model_cfg: ModelCfg, trials: list[dict], stage: str
             ) -> list[ScoreRequest]:
    """One score request per FC trial: the trial's rendered FC prompt plus the answer prefix;
    `stage` (the paradigm) selects the tokenizer as `GenRequest.stage` does."""
    n_picks = cfg.trials.fc_picks
    out = []
    for t in trials:
        text = backend.render(chat_messages(fc_prompt(t["cue"], t["candidates"], n_picks), model_cfg.system_prompt))
        out.append(ScoreRequest(text=text + ANSWER_PREFIX, continuations=[answer(c, n_picks) for c in t["candidates"]],
                                end_of_turn=n_picks == 1, stage=stage))
    return out


def distribution(logprobs) -> np.ndarray | None:
    """The first-pick distribution over the candidates (softmax of the log-probabilities), or
    None when one is not finite."""
    lp = np.asarray(logprobs, dtype=np.float64)
    if lp.size == 0 or not np.isfinite(lp).all():
        return None
    p = np.exp(lp - lp.max())
    return p / p.sum()


def run_trials(backend: Backend, cfg: Config, model_cfg: ModelCfg, trials: list[dict], stage: str
               ) -> pa.Table:
    """Score one chunk of FC plan rows; log rows in `logs.SCORED_SCHEMA`, one final row per trial."""
    return score(backend, trials, requests(backend, cfg, model_cfg, trials, stage) if backend.scores else [], stage)


def score(backend: Backend, trials: list[dict], reqs: list[ScoreRequest], paradigm: str) -> pa.Table:
    """Score `reqs` (one per trial, its candidates as continuations) for `paradigm`: log rows in
    `logs.SCORED_SCHEMA`, one final row per trial.

    Raises:
        PipelineError: the backend cannot score, or answered another number of requests or
            continuations than it was given.
    """
    if not backend.scores:
        raise PipelineError(f"backend '{backend.name}' cannot score continuations, which {paradigm} needs; set "
                            f"behave.backend to one that can ({', '.join(scoring_names())}) or drop {paradigm} from "
                            f"behave.paradigms")
    if not trials:
        return logs.SCORED_SCHEMA.empty_table()
    t0 = time.perf_counter()
    results = backend.score(reqs)
    latency = (time.perf_counter() - t0) / max(len(reqs), 1)
    if len(results) != len(reqs):
        raise PipelineError(f"backend '{backend.name}' returned {len(results)} scores for {len(reqs)} requests")
    recs = []
    for t, req, res in zip(trials, reqs, results):
        if len(res.logprobs) != len(req.continuations):
            raise PipelineError(f"backend '{backend.name}' scored {len(res.logprobs)} of {len(req.continuations)} "
                                f"candidates of trial {t['trial_id']}")
        probs = distribution(res.logprobs)
        recs.append({"trial_id": t["trial_id"], "cue_idx": t["cue_idx"], "cue": t["cue"],
                     "candidates": t["candidates"], "logprobs": [float(x) for x in res.logprobs],
                     "probs": None if probs is None else probs.tolist(), "n_tokens": list(res.n_tokens),
                     "status": "ok" if probs is not None else "not_finite", "final": True,
                     "prompt_sha": prompt_sha(req.text), "n_prompt_tokens": res.n_prompt_tokens,
                     "n_output_tokens": int(sum(res.n_tokens)), "latency_s": latency})
    return pa.Table.from_pylist(recs, schema=logs.SCORED_SCHEMA)


def count_settings(cfg: Config) -> dict:
    """The settings a scored paradigm's counts and split halves depend on: `behave.scored_counts`,
    and the prior's kind when the counts are debiased."""
    out = {"scored_counts": cfg.behave.scored_counts}
    if cfg.behave.scored_counts == "debiased":
        out["scored_prior"] = cfg.behave.scored_prior
    return out


def summarize(directory) -> dict:
    """Over the final rows of an `fc_scored` log: status counts, `compliance` (share of trials
    with a distribution), and the means over trials of `mass` (probability that the first pick
    is one of the candidates, i.e. the sum of their probabilities before normalizing),
    `top_prob` (probability of the most probable candidate) and `entropy` (nats, of the
    normalized distribution; log 16 = 2.77 is uniform)."""
    counts: Counter = Counter()
    n = 0
    mass = top = ent = 0.0
    n_ok = 0
    for batch in logs.iter_final(directory, ["status", "logprobs", "probs"]):
        counts.update(batch.column("status").to_pylist())
        n += batch.num_rows
        for lp, p in zip(batch.column("logprobs").to_pylist(), batch.column("probs").to_pylist()):
            if p is None:
                continue
            p = np.asarray(p, dtype=np.float64)
            n_ok += 1
            mass += float(np.exp(np.asarray(lp, dtype=np.float64)).sum())
            top += float(p.max())
            ent += float(-(p[p > 0] * np.log(p[p > 0])).sum())
    return {"n_trials": n, "status": dict(sorted(counts.items())),
            "compliance": round(counts.get("ok", 0) / n, 4) if n else None,
            "mass": round(mass / n_ok, 4) if n_ok else None, "top_prob": round(top / n_ok, 4) if n_ok else None,
            "entropy": round(ent / n_ok, 4) if n_ok else None}


class PositionPrior:
    """Streaming estimate of the first-pick prior over list positions, per list length.

    Args:
        kind: ``"mean"`` (mean normalized probability per position) or ``"log"`` (PriDe's softmax
            of the mean log-probability per position); `behave.scored_prior`.
    """

    def __init__(self, kind: str = "mean"):
        if kind not in ("mean", "log"):
            raise ValueError(f"unknown position-prior estimate {kind!r}; use 'mean' or 'log'")
        self.kind = kind
        self.sums: dict[int, np.ndarray] = {}
        self.n: dict[int, int] = {}

    def add(self, lengths: np.ndarray, flat_logprobs: np.ndarray) -> None:
        """Add trials given as list lengths and their concatenated (unnormalized) log-probabilities."""
        lengths = np.asarray(lengths, dtype=np.int64)
        logp = normalized_log(lengths, flat_logprobs)
        if self.kind == "mean":
            logp = np.exp(logp)
        starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
        for s in np.unique(lengths):
            rows = np.flatnonzero(lengths == s)
            block = logp[(starts[rows][:, None] + np.arange(s)[None, :]).ravel()].reshape(len(rows), s)
            self.sums[int(s)] = self.sums.get(int(s), np.zeros(s)) + block.sum(axis=0)
            self.n[int(s)] = self.n.get(int(s), 0) + len(rows)

    def result(self) -> dict[int, np.ndarray]:
        """{list length: prior over its positions (sums to 1)}."""
        out = {}
        for s, total in self.sums.items():
            m = total / self.n[s]
            p = m if self.kind == "mean" else np.exp(m - m.max())
            out[s] = p / p.sum()
        return out


def normalized_log(lengths, flat_logprobs) -> np.ndarray:
    """Per trial, log-probabilities normalized over the trial's candidates (log-softmax)."""
    lengths = np.asarray(lengths, dtype=np.int64)
    lp = np.asarray(flat_logprobs, dtype=np.float64)
    parent = np.repeat(np.arange(len(lengths)), lengths)
    top = np.full(len(lengths), -np.inf)
    np.maximum.at(top, parent, lp)
    z = np.log(np.bincount(parent, weights=np.exp(lp - top[parent]), minlength=len(lengths))) + top
    return lp - z[parent]


def debias(lengths, flat_logprobs, prior: dict[int, np.ndarray]) -> np.ndarray:
    """Each trial's first-pick probabilities divided by the position prior of its list length and
    renormalized (concatenated like the input)."""
    lengths = np.asarray(lengths, dtype=np.int64)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    parent = np.repeat(np.arange(len(lengths)), lengths)
    pos = np.arange(int(lengths.sum())) - starts[parent]
    log_prior = np.zeros(len(pos))
    for s, p in prior.items():
        at = lengths[parent] == s
        log_prior[at] = np.log(p)[pos[at]]
    return np.exp(normalized_log(lengths, np.asarray(flat_logprobs, dtype=np.float64) - log_prior))


def top_picks(candidates: list[str], probs, k: int) -> list[str]:
    """The `k` most probable candidates, most probable first (ties: plan order)."""
    order = np.argsort(-np.asarray(probs, dtype=np.float64), kind="stable")[:k]
    return [candidates[i] for i in order]


def agreement(cfg: Config, model: str, generated: str, scored: str) -> dict | None:
    """How the scored choice agrees with generated FC, trial by trial (the same plan).

    Compared are the trials whose FC main attempt (the greedy pass on the same prompt) is
    compliant and that have a scored distribution. Figures: `top2_same` (share whose two most
    probable candidates are FC's two picks, in any order; with ``fc_picks`` other than 2, its
    picks), `top1_first` (most probable candidate = FC's first pick), `first_pick_rank`
    (mean rank of FC's first pick in the scored order, 1 = most probable) and
    `first_pick_prob` (mean probability the scored distribution gives FC's first pick).

    Returns:
        The figures and `n_trials`, or None when either log has no such trials.
    """
    k = cfg.trials.fc_picks
    fc_dir, sc_dir = paths.behavior_dir(cfg, model, generated), paths.behavior_dir(cfg, model, scored)
    if not logs.list_parts(fc_dir) or not logs.list_parts(sc_dir):
        return None
    picks: dict[int, list[str]] = {}
    for p in logs.list_parts(fc_dir):
        t = logs.read_part(p, ["trial_id", "attempt", "status", "picks"])
        t = t.filter(pc.equal(t.column("attempt"), 0))
        for tid, status, ps in zip(t.column("trial_id").to_pylist(), t.column("status").to_pylist(),
                                   t.column("picks").to_pylist()):
            if status == "ok" and len(ps) == k:
                picks.setdefault(tid, ps)
    n = same = first = 0
    rank = prob = 0.0
    for batch in logs.iter_final(sc_dir, ["trial_id", "candidates", "probs"]):
        for tid, cands, p in zip(batch.column("trial_id").to_pylist(), batch.column("candidates").to_pylist(),
                                 batch.column("probs").to_pylist()):
            fc = picks.get(tid)
            if fc is None or p is None or fc[0] not in cands:
                continue
            order = top_picks(cands, p, len(cands))
            n += 1
            same += set(order[:k]) == set(fc)
            first += order[0] == fc[0]
            rank += order.index(fc[0]) + 1
            prob += float(p[cands.index(fc[0])])
    if not n:
        return None
    return {"n_trials": n, "top2_same": round(same / n, 4), "top1_first": round(first / n, 4),
            "first_pick_rank": round(rank / n, 3), "first_pick_prob": round(prob / n, 4)}

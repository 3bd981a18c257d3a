"""Triplet odd-one-out (beyond the paper): three words; the model names the one that does not fit.

The paradigm behind the THINGS similarity embeddings (Hebart et al. 2020), used to compare
LLM and human similarity judgments: the two words not chosen count as a similar pair.

Plan (`build_triplet_plan`): rounds of a seeded, greedy, balanced design. Each round deals
every word once, but for the N mod 3 words shown most so far: a word not yet placed is
joined by the unplaced word it has shared the fewest triplets with, then by the one sharing
the fewest with both (ties at random); of 8 such deals per round the one repeating the fewest
pairs is kept. Every word is shown equally often (within one), every pair about equally
often. ``trials.triplet_trials`` sets the triplets per word (N x that / 3 trials in all);
every pair is covered once from about (N - 1) / 2 per word. Positions within a triplet
are shuffled. ``trial_id`` is the plan row; the log's ``cue`` is the first word shown (a
triplet has no cue), ``candidates`` the three words as shown, ``run`` the round.

Two paradigms share the plan:

- ``triplet``: a generated answer ``output: word``, through the same repair and retry
  machinery as FC (`attempts.Protocol`: greedy main and repair prompts, then sampled retries
  seeded by ``trials.triplet_seed``); `behave.structured_triplet` constrains the answer to the
  three words. `parse_triplet` gives the status (``ok``, ``empty``, ``unparseable``,
  ``wrong_count``, ``not_in_list``).
- ``triplet_scored``: each word's probability as the answer (its tokens and the end of the
  answer after ``output:``, as scored FC scores candidates), in `logs.SCORED_SCHEMA`.
  ``behave.scored_counts`` applies as to scored FC: ``"debiased"`` divides out the position
  prior of the three slots estimated from the counted trials (`scored.PositionPrior`),
  ``"expected"`` uses the probabilities as they are, ``"top"`` counts the most probable word.

Geometry (`similarity`): for words i and j, the share of the counted triplets holding both in
which they were kept together (the third word was the odd one), expected shares for the
scored variant. Pairs never shown together get the chance value 1/3 (stats: ``uncovered_pairs``);
the diagonal is 1; a word without a counted triplet is masked (NaN row and column). Both the
RSA reference (``sim_ppmi.npy``) and the regression feature (``sim_counts.npy``) are this
share: triplets have no response columns to weight. ``counts.npz`` holds the kept-together
counts. Split halves: the parity of the round (looked up in the plan: scored logs have no round),
each half compared on the pairs both halves showed (a pair one half never showed is missing
there, not at chance).
"""

from __future__ import annotations

import functools
import re
import unicodedata

import numpy as np

from ..errors import PipelineError
from ..prompts import chat_messages, prompt_sha, template, template_sha
from . import register
from .base import Paradigm, Units

CHANCE = 1 / 3
"""The share of triplets holding a pair in which a chooser without preferences keeps it."""
_MIN_TOKENS = 16
_TRIES = 8
_SHOWN_WEIGHT = 1 << 20


def build_triplet_plan(words: list[str], per_word: int, seed: int):
    """The triplet plan table: ``trial_id, cue_idx, cue, run, candidates`` (module docstring).

    Args:
        words: the run vocabulary (at least 3 words).
        per_word: `trials.triplet_trials`, triplets per word.
        seed: `trials.triplet_seed`.
    """
    import pyarrow as pa

    n = len(words)
    if n < 3:
        raise PipelineError(f"a triplet plan needs at least 3 words, got {n}")
    total = -(-n * per_word // 3)
    rng = np.random.default_rng(seed)
    shared = np.zeros((n, n), dtype=np.int32)
    shown = np.zeros(n, dtype=np.int64)
    rows, rounds, r = [], [], 0
    while len(rows) < total:
        best = None
        for _ in range(_TRIES):
            order = np.lexsort((rng.random(n), shown))[:n - n % 3]
            got = _deal(order, shared, shown, rng, total - len(rows))
            if best is None or got[1] < best[1]:
                best = got
        for a, b, c in best[0]:
            for x, y in ((a, b), (a, c), (b, c)):
                shared[x, y] += 1
                shared[y, x] += 1
            shown[[a, b, c]] += 1
            rows.append(rng.permutation([a, b, c]))
            rounds.append(r)
        r += 1
    idx = np.asarray(rows, dtype=np.int32).reshape(-1, 3)
    word_arr = pa.array(words, pa.string())
    return pa.Table.from_arrays([
        pa.array(np.arange(len(idx), dtype=np.int64)),
        pa.array(idx[:, 0]),
        word_arr.take(pa.array(idx[:, 0])),
        pa.array(np.asarray(rounds, dtype=np.int16)),
        pa.ListArray.from_arrays(pa.array(np.arange(0, 3 * len(idx) + 1, 3, dtype=np.int32)),
                                 word_arr.take(pa.array(idx.ravel()))),
    ], schema=plan_schema())


def _deal(order: np.ndarray, shared: np.ndarray, shown: np.ndarray, rng, most: int) -> tuple[list, int]:
    """One round over the words of `order` (at most `most` triplets): (triplets, how often their
    pairs were shown together before). Partners share the fewest triplets with the word(s)
    already placed, ties at random; in a last, partial round they are first the words shown
    least so far, so that every word ends up shown equally often (within one)."""
    free = np.zeros(len(shared), dtype=bool)
    free[order] = True
    trios, cost = [], 0
    weight = _SHOWN_WEIGHT if most < len(order) // 3 else 0
    for a in order:
        if not free[a] or len(trios) == most:
            continue
        free[a] = False
        pool = np.flatnonzero(free)
        base = weight * shown[pool] + rng.random(len(pool))
        b = pool[np.argmin(base + shared[a, pool])]
        keep = pool != b
        pool, base = pool[keep], base[keep]
        c = pool[np.argmin(base + shared[a, pool] + shared[b, pool])]
        free[[b, c]] = False
        cost += int(shared[a, b] + shared[a, c] + shared[b, c])
        trios.append((a, b, c))
    return trios, cost


def plan_schema():
    import pyarrow as pa

    return pa.schema([("trial_id", pa.int64()), ("cue_idx", pa.int32()), ("cue", pa.string()),
                      ("run", pa.int16()), ("candidates", pa.list_(pa.string()))])


def _norm(s: str) -> str:
    return unicodedata.normalize("NFC", s).strip().lower()


_ANSWER = re.compile(r"output\s*:\s*([^\n]*)", re.IGNORECASE)
_EDGES = re.compile(r"^[\W_]+|[\W_]+$")


def parse_triplet(output: str | None, words: list[str]):
    """The odd one out named by one answer (`parse.Parsed`: ``picks`` the word as planned).

    The answer is the text after the last ``output:`` (else the last non-blank line), without
    surrounding punctuation; compared with the three words case-insensitively (NFC). Statuses:
    ``empty`` (blank), ``unparseable`` (no letter), ``wrong_count`` (several comma- or
    ``and``-separated words), ``not_in_list`` (not one of the three), ``ok``.
    """
    from ..parse import Parsed

    if output is None or not output.strip():
        return Parsed(status="empty")
    found = _ANSWER.findall(output)
    lines = [ln for ln in output.splitlines() if ln.strip()]
    answer = _EDGES.sub("", (found[-1] if found else lines[-1]).strip())
    if not any(ch.isalpha() for ch in answer):
        return Parsed(raw=[answer], status="unparseable")
    parts = [p for p in re.split(r"\s*,\s*|\s+and\s+|\s*/\s*", answer) if p]
    if len(parts) > 1:
        return Parsed(raw=parts, status="wrong_count")
    which = {_norm(w): w for w in words}
    if _norm(answer) in which:
        return Parsed(picks=[which[_norm(answer)]], raw=[answer], status="ok")
    return Parsed(raw=[answer], status="not_in_list")


def triplet_regex(words: list[str]) -> str:
    """Regex for ``output: w`` with w one of the three words (structured output)."""
    esc = ("".join(c if c.isalnum() else "\\" + c for c in w) for w in words)
    return f"output: (?:{'|'.join(esc)})"


@functools.cache
def _protocol_class():
    from ..attempts import Protocol
    from ..backends import GenRequest

    class TripletProtocol(Protocol):
        structured_min_tokens = _MIN_TOKENS

        def __init__(self, backend, cfg, model_cfg, words=None):
            super().__init__(backend, cfg, model_cfg)
            self.structured = cfg.behave.structured_triplet
            self.max_tokens = self.cap(cfg.behave.triplet_max_tokens, self.structured)

        def request(self, trial, attempt, latest):
            shown = ", ".join(trial["candidates"])
            user = template("triplet").format(words=shown) if attempt == 0 else \
                template("triplet_repair").format(words=shown, bad_output=(latest or "").strip())
            temperature, top_p, seed = self.sampling(attempt, self.cfg.trials.triplet_seed, trial["trial_id"])
            text = self.render(user)
            cands = trial["candidates"]
            req = GenRequest(text=text, max_tokens=self.max_tokens, temperature=temperature, top_p=top_p, seed=seed,
                             allowed_regex=triplet_regex(cands) if self.structured else None,
                             allowed_choices=[f"output: {w}" for w in cands] if self.structured and self.choices
                             else None, stage="triplet")
            return req, prompt_sha(text), seed

        def parse(self, trial, text):
            return parse_triplet(text, trial["candidates"])

    return TripletProtocol


def pair_shares(idx: np.ndarray, odd: np.ndarray, n: int, weights: np.ndarray | None = None):
    """Kept-together and shown-together counts of word pairs (symmetric N x N).

    Args:
        idx: (T, 3) vocabulary indices of the counted triplets.
        odd: (T,) position (0-2) of the odd one out; ignored when `weights` is given.
        n: vocabulary size.
        weights: (T, 3) probability of each position being the odd one (scored triplets):
            the pair left by position k is kept with weight ``weights[:, k]``.

    Returns:
        (kept, shown): float64 N x N arrays.
    """
    kept = np.zeros((n, n))
    shown = np.zeros((n, n))
    for k, (x, y) in enumerate(((1, 2), (0, 2), (0, 1))):
        w = weights[:, k] if weights is not None else (odd == k).astype(np.float64)
        np.add.at(kept, (idx[:, x], idx[:, y]), w)
        np.add.at(kept, (idx[:, y], idx[:, x]), w)
        np.add.at(shown, (idx[:, x], idx[:, y]), 1.0)
        np.add.at(shown, (idx[:, y], idx[:, x]), 1.0)
    return kept, shown


def share_matrix(kept: np.ndarray, shown: np.ndarray, valid: np.ndarray, unseen: float = CHANCE) -> np.ndarray:
    """The similarity: kept / shown per pair, `unseen` (default `CHANCE`) where never shown, 1 on
    the diagonal, NaN rows and columns for words that are not `valid` (float32)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        sim = np.where(shown > 0, kept / np.where(shown > 0, shown, 1), unseen)
    np.fill_diagonal(sim, 1.0)
    bad = ~np.asarray(valid, dtype=bool)
    sim[bad, :] = np.nan
    sim[:, bad] = np.nan
    return sim.astype(np.float32)


def _counted(src, words: list[str], select, weighted: str | None, prior_kind: str = "mean"):
    """(idx, odd or None, weights or None, stats) of the counted final rows of a triplet log."""
    import pyarrow as pa
    import pyarrow.compute as pc

    from ..logs import iter_final
    from ..scored import PositionPrior, debias

    index = {w: i for i, w in enumerate(words)}
    cols = ["trial_id", "candidates", "status"] + (["picks"] if weighted is None else ["logprobs", "probs"])
    trios, odds, lps, probs, n_rows = [], [], [], [], 0
    for batch in iter_final(src, cols):
        if select is not None and batch.num_rows:
            batch = batch.filter(pa.array(np.asarray(select(batch), dtype=bool)))
        n_rows += batch.num_rows
        ok = batch.filter(pc.equal(batch.column("status"), "ok"))
        for row in ok.to_pylist():
            try:
                trio = [index[w] for w in row["candidates"]]
            except KeyError as e:
                raise PipelineError(f"{src}: trial {row['trial_id']} shows {e.args[0]!r}, which is not in the "
                                    f"run's vocabulary: the log was written for another vocabulary; use a new "
                                    f"experiment.name or delete these logs and re-run behave") from None
            trios.append(trio)
            if weighted is None:
                odds.append(row["candidates"].index(row["picks"][0]))
            else:
                lps.append(row["logprobs"])
                probs.append(row["probs"])
    idx = np.asarray(trios, dtype=np.int64).reshape(-1, 3)
    stats = {"trials": n_rows, "dropped_invalid": n_rows - len(idx)}
    if weighted is None:
        return idx, np.asarray(odds, dtype=np.int64), None, stats
    lp = np.asarray(lps, dtype=np.float64).reshape(-1, 3)
    if weighted == "debiased":
        est = PositionPrior(prior_kind)
        lengths = np.full(len(lp), 3)
        est.add(lengths, lp.ravel())
        prior = est.result()
        w = debias(lengths, lp.ravel(), prior).reshape(-1, 3) if len(lp) else lp
        if prior:
            stats["position_prior"] = [round(float(x), 6) for x in prior[3]]
            stats["scored_prior"] = prior_kind
    elif weighted == "top":
        p = np.asarray(probs, dtype=np.float64).reshape(-1, 3)
        w = np.eye(3)[np.argmax(p, axis=1)] if len(p) else p
    else:
        w = np.asarray(probs, dtype=np.float64).reshape(-1, 3)
    stats["scored_counts"] = weighted
    return idx, None, w, stats


def count_triplets(src, words: list[str], select=None, weighted: str | None = None, prior_kind: str = "mean"):
    """The kept-together count matrix of a triplet log, for `aggregate.count_matrix`.

    Returns:
        (kept as CSR N x N, the words as columns, stats): the stats hold what `aggregate`
        reports (``trials``, ``picks`` = counted triplets, masked rows) and, under ``_shown``,
        the shown-together counts the similarity needs (not written).
    """
    import scipy.sparse as sp

    n = len(words)
    idx, odd, w, stats = _counted(src, words, select, weighted, prior_kind)
    kept, shown = pair_shares(idx, odd, n, w)
    valid = np.zeros(n, dtype=bool)
    valid[idx.ravel()] = True
    masked = [words[i] for i in np.flatnonzero(~valid)]
    off = ~np.eye(n, dtype=bool)
    counts = sp.csr_matrix(kept if weighted not in (None, "top") else kept.astype(np.int64))
    stats.update(picks=int(len(idx)), responses=n, nonzero_cells=int(counts.nnz), empty_rows=len(masked),
                 empty_row_words=masked, masked_rows=len(masked), masked_row_words=masked,
                 covered_pairs=int((shown[off] > 0).sum() // 2), uncovered_pairs=int((shown[off] == 0).sum() // 2),
                 row_valid=valid.tolist(), _shown=shown, _half=select is not None)
    return counts, list(words), stats


@register("triplet")
class Triplet(Paradigm):
    rank = 10
    label, short, title, color = "Triplet odd-one-out", "Triplet", "Triplet", "#a55194"
    exported = True
    config_keys = {"trials": {"triplet_trials": 24, "triplet_seed": 12345},
                   "behave": {"structured_triplet": False, "triplet_max_tokens": 10}}

    def check_config(self, cfg) -> None:
        from ..config import ConfigError

        if cfg.experiment.paper_mode:
            raise ConfigError(f"{cfg.source}: 'behave.paradigms' has '{self.name}', but paper mode runs only the "
                              f"paper's protocol, which has no triplets; drop it or set experiment.paper_mode = false")
        if cfg.trials.triplet_trials < 1:
            raise ConfigError(f"{cfg.source}: 'trials.triplet_trials' = {cfg.trials.triplet_trials} must be at "
                              f"least 1 (triplets per word)")
        if cfg.behave.triplet_max_tokens < 1:
            raise ConfigError(f"{cfg.source}: 'behave.triplet_max_tokens' must be at least 1")

    def plan_schema(self):
        return plan_schema()

    def plan_inputs(self, cfg) -> dict:
        return {"triplet_trials": cfg.trials.triplet_trials, "triplet_seed": cfg.trials.triplet_seed}

    def build_plan(self, cfg, words):
        table = build_triplet_plan(words, cfg.trials.triplet_trials, cfg.trials.triplet_seed)
        return table, {"per_word": cfg.trials.triplet_trials, "rounds": int(table.column("run")[-1].as_py()) + 1}

    def units(self, cfg, n_words: int) -> Units:
        return Units("triplet_trials", cfg.trials.triplet_trials, 1 / 3, 1 / 3, None, cfg.validity.fc_trials_per_s)

    def halves(self, cfg, n_words: int, h: int):
        from ..trials import load_trials

        plan = load_trials(cfg, self.plan_name)
        parity = np.zeros(plan.num_rows, dtype=np.int64)
        parity[plan.column("trial_id").to_numpy()] = plan.column("run").to_numpy() % 2
        return lambda b: parity[b.column("trial_id").to_numpy()] == h

    def behave_settings(self, cfg, model_cfg) -> dict:
        from ..attempts import retry_sampling

        b = cfg.behave
        return dict(prompts=[template_sha("triplet"), template_sha("triplet_repair")], structured=b.structured_triplet,
                    repair=b.repair, retries=b.retries, max_tokens=b.triplet_max_tokens,
                    retry=retry_sampling(cfg, model_cfg), seed=cfg.trials.triplet_seed, parse=1)

    def protocol(self, backend, cfg, model_cfg, words=None):
        return _protocol_class()(backend, cfg, model_cfg, words)

    def summarize(self, directory, cfg) -> dict:
        from ..behave import summarize_generated

        out, attempts = summarize_generated(directory)
        n = out["n_trials"]
        out["first_try_ok"] = round(attempts.get(0, 0) / n, 4) if n else None
        return out

    def count(self, src, words, rules, select=None, options=None):
        return count_triplets(src, words, select)

    def similarity_of(self, counts, stats):
        """The share matrix for both kinds; a split half (counted with a selector) leaves pairs it
        never showed NaN, so that the halves are compared on the pairs both showed."""
        unseen = np.nan if stats.get("_half") else CHANCE
        sim = share_matrix(counts.toarray(), stats["_shown"], stats["row_valid"], unseen)
        return lambda kind: sim


@register("triplet_scored")
class ScoredTriplet(Triplet):
    rank = 11
    label, short, title, color = "Triplet scored (probabilities)", "Triplet scored", "Scored triplet", "#6b6ecf"
    plan = "triplet"
    scoring = True
    pipelined = False
    config_keys = {"trials": Triplet.config_keys["trials"]}

    def log_schema(self):
        from ..logs import SCORED_SCHEMA

        return SCORED_SCHEMA

    def behave_settings(self, cfg, model_cfg) -> dict:
        from ..scored import ANSWER_PREFIX, SCORE_VERSION

        return dict(prompts=[template_sha("triplet")], answer_prefix=ANSWER_PREFIX, scoring=SCORE_VERSION)

    def protocol(self, backend, cfg, model_cfg, words=None):
        return None

    def run_chunk(self, backend, cfg, model_cfg, trials, words=None, proto=None):
        """Score each word of each triplet as the answer (its tokens, then the end of the answer)."""
        from ..backends import ScoreRequest
        from ..scored import ANSWER_PREFIX, score

        reqs = [ScoreRequest(text=backend.render(chat_messages(template("triplet").format(
                    words=", ".join(t["candidates"])), model_cfg.system_prompt)) + ANSWER_PREFIX,
                    continuations=[f" {w}" for w in t["candidates"]], end_of_turn=True, stage=self.name)
                for t in trials] if backend.scores else []
        return score(backend, trials, reqs, self.name)

    def summarize(self, directory, cfg) -> dict:
        from ..scored import summarize

        return summarize(directory)

    def count_settings(self, cfg) -> dict:
        from ..scored import count_settings

        return count_settings(cfg)

    def split_settings(self, cfg) -> dict:
        return self.count_settings(cfg)

    def count_options(self, cfg):
        return cfg.behave.scored_counts, cfg.behave.scored_prior

    def count(self, src, words, rules, select=None, options=None):
        mode, prior = options or ("expected", "mean")
        return count_triplets(src, words, select, weighted=mode, prior_kind=prior)

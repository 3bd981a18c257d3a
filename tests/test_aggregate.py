"""aggregate: counts, PPMI and cosine from hand-made trial logs, checked against hand
computations (math.log), scipy's cdist and a plain-Python Counter reference."""

from __future__ import annotations

import json
import math
from collections import Counter

import _synthetic as syn
import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from scipy.spatial.distance import cdist

from pipeline import aggregate, comparison, paths
from pipeline.errors import PipelineError
from pipeline.logs import SCHEMA, write_part
from pipeline.manifest import Manifest
from pipeline.options import Options
from pipeline.similarity import cosine, ppmi

WORDS = ["dog", "cat", "tree", "milk"]


def _rows_table(rows: list[dict]) -> pa.Table:
    """Trial-log rows with the columns aggregation reads; the others get neutral values."""
    cols = {f.name: [] for f in SCHEMA}
    for r in rows:
        full = {"trial_id": r["trial_id"], "cue_idx": r["cue_idx"], "cue": r["cue"], "candidates": [],
                "run": 0, "attempt": r.get("attempt", 0), "attempt_kind": "main",
                "raw_output": r.get("raw_output", "output: " + ", ".join(r["picks"]) + "."),
                "picks": r["picks"], "extracted": r["picks"], "status": r.get("status", "ok"),
                "final": r.get("final", True), "seed": 0, "prompt_sha": "", "n_prompt_tokens": 0,
                "n_output_tokens": 0, "latency_s": 0.0}
        for k in cols:
            cols[k].append(full[k])
    return pa.table({f.name: pa.array(cols[f.name], f.type) for f in SCHEMA})


def _trial(tid, cue, picks, **kw):
    return {"trial_id": tid, "cue_idx": WORDS.index(cue), "cue": cue, "picks": picks, **kw}


@pytest.fixture
def cfg(make_config):
    c = make_config()
    paths.vocab_file(c).parent.mkdir(parents=True, exist_ok=True)
    paths.vocab_file(c).write_text("\n".join(WORDS) + "\n")
    return c


FC_TRIALS = [
    _trial(0, "dog", ["cat", "tree"]),
    _trial(1, "dog", ["Cat", " cat"]),
    _trial(2, "dog", ["cat"]),
    _trial(3, "cat", ["tree", "tree"], final=False, status="wrong_count"),
    _trial(3, "cat", ["dog", "DOG"], attempt=1),
    _trial(4, "tree", ["cat", "NA"]),
    _trial(5, "tree", ["dog", "--"]),
    _trial(6, "tree", ["", "nan"]),
]


def test_fc_matches_hand_computation(cfg):
    write_part(paths.behavior_dir(cfg, "m", "fc"), _rows_table(FC_TRIALS[:4]))
    write_part(paths.behavior_dir(cfg, "m", "fc"), _rows_table(FC_TRIALS[4:]))
    aggregate.run(cfg, Options(paradigm="fc"))
    out = aggregate.load_matrices(cfg, "m", "fc")
    assert out["rows"] == WORDS
    assert out["cols"] == ["cat", "dog", "tree"]
    expected_counts = np.array([[4, 0, 1], [0, 2, 0], [1, 1, 0], [0, 0, 0]])
    np.testing.assert_array_equal(out["counts"].toarray(), expected_counts)
    # N = 9; row sums dog 5, cat 2, tree 2; column sums cat 5, dog 3, tree 1.
    expected_ppmi = np.array([
        [math.log(4 * 9 / (5 * 5)), 0.0, math.log(1 * 9 / (5 * 1))],
        [0.0, math.log(2 * 9 / (2 * 3)), 0.0],
        [max(math.log(1 * 9 / (2 * 5)), 0.0), math.log(1 * 9 / (2 * 3)), 0.0],
        [0.0, 0.0, 0.0],
    ])
    assert math.log(0.9) < 0 and expected_ppmi[2, 0] == 0.0
    np.testing.assert_allclose(out["ppmi"].toarray(), expected_ppmi, rtol=1e-6)
    nan = np.nan  # "milk" never got a response: masked, not a zero row
    expected_sim = np.array([[1, 0, 0, nan], [0, 1, 1, nan], [0, 1, 1, nan], [nan] * 4], dtype=float)
    np.testing.assert_allclose(out["sim_ppmi"], expected_sim, atol=1e-6)
    c = 4 / (math.sqrt(17) * math.sqrt(2))
    expected_sim_counts = np.array([[1, 0, c, nan], [0, 1, 1 / math.sqrt(2), nan],
                                    [c, 1 / math.sqrt(2), 1, nan], [nan] * 4])
    np.testing.assert_allclose(out["sim_counts"], expected_sim_counts, atol=1e-6)
    assert out["sim_ppmi"].dtype == np.float32 and out["sim_counts"].dtype == np.float32
    st = out["stats"]
    assert st["trials"] == 7 and st["picks"] == 9 and st["responses"] == 3
    assert st["dropped_invalid"] == 4 and st["dropped_cue_repeats"] == 0
    assert st["empty_rows"] == 1 and st["empty_row_words"] == ["milk"]


def test_fa_drops_cue_repeats_keeps_duplicates(cfg):
    rows = [_trial(0, "dog", ["bark", "Dog", "bark", "leash", " DOG "]),
            _trial(1, "cat", ["dog", "cat", "mouse"]),
            _trial(2, "tree", ["leaf", "leaf"])]
    write_part(paths.behavior_dir(cfg, "m", "fa"), _rows_table(rows))
    stats = aggregate.aggregate_one(cfg, "m", "fa", WORDS)
    out = aggregate.load_matrices(cfg, "m", "fa")
    assert out["cols"] == ["bark", "dog", "leaf", "leash", "mouse"]
    np.testing.assert_array_equal(out["counts"].toarray(), [[2, 0, 0, 1, 0], [0, 1, 0, 0, 1],
                                                            [0, 0, 2, 0, 0], [0, 0, 0, 0, 0]])
    assert stats["dropped_cue_repeats"] == 3 and stats["picks"] == 7
    assert stats["empty_row_words"] == ["milk"]


def _random_log(rng, n_trials, words, vocab_extra):
    pool = words + vocab_extra
    rows = []
    for t in range(n_trials):
        cue = int(rng.integers(len(words)))
        k = int(rng.integers(0, 6))
        picks = [pool[int(i)] for i in rng.integers(len(pool), size=k)]
        picks = [p.upper() if rng.random() < 0.1 else p for p in picks]
        rows.append({"trial_id": t, "cue_idx": cue, "cue": words[cue], "picks": picks})
    return rows


def _reference_counts(rows, words):
    counter = Counter()
    for r in rows:
        for p in r["picks"]:
            s = p.lower().strip()
            if not s or s in ("na", "nan") or not any(ch.isalnum() for ch in s) or s == r["cue"].lower():
                continue
            counter[(r["cue_idx"], s)] += 1
    cols = sorted({s for _, s in counter})
    m = np.zeros((len(words), len(cols)))
    for (i, s), v in counter.items():
        m[i, cols.index(s)] = v
    return m, cols


def test_random_log_vs_counter_and_cdist(make_config):
    rng = np.random.default_rng(3)
    words = [f"w{i:02d}" for i in range(30)]
    cfg = make_config()
    paths.vocab_file(cfg).parent.mkdir(parents=True, exist_ok=True)
    paths.vocab_file(cfg).write_text("\n".join(words) + "\n")
    rows = _random_log(rng, 900, words, ["zebra", "Élan", "na", "??", "x-ray"])
    for chunk in range(3):
        write_part(paths.behavior_dir(cfg, "m", "fa"), _rows_table(rows[chunk * 300:(chunk + 1) * 300]))
    aggregate.aggregate_one(cfg, "m", "fa", words)
    out = aggregate.load_matrices(cfg, "m", "fa")
    ref, ref_cols = _reference_counts(rows, words)
    assert out["cols"] == ref_cols
    np.testing.assert_array_equal(out["counts"].toarray(), ref)
    total, rs, cs = ref.sum(), ref.sum(1, keepdims=True), ref.sum(0, keepdims=True)
    with np.errstate(divide="ignore"):
        ref_ppmi = np.where(ref > 0, np.maximum(np.log(ref * total / (rs * cs)), 0), 0)
    np.testing.assert_allclose(out["ppmi"].toarray(), ref_ppmi, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(out["sim_ppmi"], 1 - cdist(ref_ppmi, ref_ppmi, "cosine"), atol=1e-6)
    np.testing.assert_allclose(out["sim_counts"], 1 - cdist(ref, ref, "cosine"), atol=1e-6)


def test_skip_recompute_on_new_parts(cfg, caplog):
    d = paths.behavior_dir(cfg, "m", "fc")
    write_part(d, _rows_table(FC_TRIALS[:3]))
    aggregate.aggregate_one(cfg, "m", "fc", WORDS)
    sim = paths.matrices_dir(cfg, "m", "fc") / "sim_ppmi.npy"
    mtime = sim.stat().st_mtime_ns
    aggregate.aggregate_one(cfg, "m", "fc", WORDS)
    assert sim.stat().st_mtime_ns == mtime
    write_part(d, _rows_table(FC_TRIALS[3:]))
    stats = aggregate.aggregate_one(cfg, "m", "fc", WORDS)
    assert stats["trials"] == 7
    assert Manifest(cfg.run_dir).stage("aggregate/m/fc")["complete"]
    assert json.loads((paths.matrices_dir(cfg, "m", "fc") / "stats.json").read_text())["picks"] == 9


def test_corrupt_part_names_file(cfg):
    d = paths.behavior_dir(cfg, "m", "fc")
    write_part(d, _rows_table(FC_TRIALS))
    bad = d / "part-000of001-000007.parquet"
    bad.write_bytes(b"PAR1 this is not parquet")
    with pytest.raises(PipelineError, match="part-000of001-000007"):
        aggregate.aggregate_one(cfg, "m", "fc", WORDS)
    assert not (paths.matrices_dir(cfg, "m", "fc") / "sim_ppmi.npy").exists()


def test_missing_logs_and_vocab_mismatch(cfg):
    with pytest.raises(PipelineError, match="behave --config"):
        aggregate.aggregate_one(cfg, "m", "fc", WORDS)
    write_part(paths.behavior_dir(cfg, "m", "fc"), _rows_table([
        {"trial_id": 0, "cue_idx": 1, "cue": "dog", "picks": ["tree"]}]))
    with pytest.raises(PipelineError, match="another vocabulary"):
        aggregate.aggregate_one(cfg, "m", "fc", WORDS)


def _paper(make_config):
    c = make_config(experiment={"name": "p", "data_dir": str(make_config().experiment.data_dir), "paper_mode": True})
    paths.vocab_file(c).parent.mkdir(parents=True, exist_ok=True)
    paths.vocab_file(c).write_text("\n".join(WORDS) + "\n")
    return c


NA_TRIALS = [_trial(0, "dog", ["bark", "null", "None", "n/a", "NA", "nan", "none"]),
             _trial(1, "cat", ["purr", "NULL", "#N/A", "<NA>", "meow"])]


def test_na_strings_default_vs_paper(cfg, make_config):
    for c, expect in ((cfg, ["#n/a", "<na>", "bark", "meow", "n/a", "none", "null", "purr"]),
                      (_paper(make_config), ["bark", "meow", "none", "purr"])):
        write_part(paths.behavior_dir(c, "m", "fa"), _rows_table(NA_TRIALS))
        stats = aggregate.aggregate_one(c, "m", "fa", WORDS)
        out = aggregate.load_matrices(c, "m", "fa")
        assert out["cols"] == expect, c.experiment.paper_mode
        # "na" and "nan" (after lowercasing) go in both modes, as the authors drop them explicitly
        assert "na" not in out["cols"] and "nan" not in out["cols"]
    assert stats["dropped_na_strings"] == 6  # null, None, n/a, NULL, #N/A, <NA>


def test_whole_fa_answers_read_as_missing_yield_nothing_in_paper_mode(cfg, make_config):
    """METHOD.md §2 "Clean": the authors' raw FA answers went through a CSV read with pandas'
    defaults, so an answer that is exactly an NA string (after strip) gives no associate, and a
    cue whose every answer is such has no FA row. Picks come from the project's own parser."""
    from pipeline.parse import parse_fa

    answers = {"dog": ["None", " #N/A N/A ", "output: bark, leash, bone, tail, walk.", "-1.#IND", "1.#QNAN",
                       "output: none, bark, cat."],
               "cat": ["None", "-1.#QNAN", "1.#IND\n", "#N/A N/A"],      # every answer missing: no row
               "tree": ["output: leaf, none.", "none", "NONE"],           # case matters: all counted
               "milk": ["output: white, cow, cat."]}
    rows = [{**_trial(10 * WORDS.index(c) + i, c, parse_fa(a, c).picks), "raw_output": a}
            for c, outs in answers.items() for i, a in enumerate(outs)]
    for c, paper in ((cfg, False), (_paper(make_config), True)):
        write_part(paths.behavior_dir(c, "m", "fa"), _rows_table(rows))
        stats = aggregate.aggregate_one(c, "m", "fa", WORDS)
        out = aggregate.load_matrices(c, "m", "fa")
        counts = out["counts"].toarray()
        col = {w: i for i, w in enumerate(out["cols"])}
        got = {(WORDS[r], out["cols"][k]): int(counts[r, k]) for r, k in zip(*counts.nonzero())}
        if paper:
            assert got == {("dog", "bark"): 2, ("dog", "leash"): 1, ("dog", "bone"): 1, ("dog", "tail"): 1,
                           ("dog", "walk"): 1, ("dog", "none"): 1, ("dog", "cat"): 1, ("tree", "leaf"): 1,
                           ("tree", "none"): 3, ("milk", "white"): 1, ("milk", "cow"): 1, ("milk", "cat"): 1}
            assert stats["masked_row_words"] == ["cat"] and stats["dropped_na_answers"] == 8
            assert aggregate.settings(c, WORDS, "fa")["na_answers"]  # paper FA counted before this rule is stale
            assert np.isnan(out["sim_ppmi"][WORDS.index("cat")]).all()
        else:
            assert got[("dog", "none")] == 2 and got[("dog", "n/a n/a")] == 1 and got[("dog", "1.#ind")] == 1
            assert got[("cat", "none")] == got[("cat", "1.#qnan")] == got[("cat", "1.#ind")] == 1 and "n/a n/a" in col
            assert stats["masked_row_words"] == [] and stats["dropped_na_answers"] == 0
            assert "na_answers" not in aggregate.settings(c, WORDS, "fa")


def test_cue_without_responses_default_masks_paper_follows_the_authors(cfg, make_config):
    rows = [_trial(0, "dog", ["bark", "leash"]), _trial(1, "cat", ["cat", "Cat"]),   # only cue repeats
            _trial(2, "tree", ["??", "nan"]), _trial(3, "milk", ["white"])]         # nothing valid
    for c, masked in ((cfg, ["cat", "tree"]), (_paper(make_config), ["tree"])):
        write_part(paths.behavior_dir(c, "m", "fa"), _rows_table(rows))
        stats = aggregate.aggregate_one(c, "m", "fa", WORDS)
        sim = aggregate.load_matrices(c, "m", "fa")["sim_ppmi"]
        assert stats["masked_row_words"] == masked
        for w in WORDS:
            i = WORDS.index(w)
            assert np.isnan(sim[i]).all() == (w in masked)
        if c.experiment.paper_mode:  # the authors' all-cue-repeat row: a zero row, diagonal included
            row = np.asarray(sim[WORDS.index("cat")])
            assert (row[[WORDS.index(w) for w in WORDS if w not in masked]] == 0).all()
    fc = [_trial(0, "dog", ["cat"]), _trial(1, "tree", [])]
    for c, masked in ((cfg, ["cat", "tree", "milk"]), (_paper(make_config), ["cat", "milk"])):
        write_part(paths.behavior_dir(c, "m", "fc"), _rows_table(fc))
        assert aggregate.aggregate_one(c, "m", "fc", WORDS)["masked_row_words"] == masked


def test_halves_add_up_to_the_full_count(make_config):
    from pipeline.aggregate import count_matrix

    cfg = syn.config(make_config, models=("m1",))
    data = syn.build(cfg)
    for paradigm in ("fc", "fa"):
        d = paths.behavior_dir(cfg, "m1", paradigm)
        full, cols, _ = count_matrix(d, data["words"], paradigm)
        halves = [count_matrix(d, data["words"], paradigm,
                               select=lambda b, h=h: b.column("trial_id").to_numpy() % 2 == h) for h in (0, 1)]
        assert halves[0][2]["trials"] + halves[1][2]["trials"] == count_matrix(d, data["words"], paradigm)[2]["trials"]
        total = {}
        for counts, hcols, _ in halves:
            coo = counts.tocoo()
            for r, c, v in zip(coo.row, coo.col, coo.data):
                total[r, hcols[c]] = total.get((r, hcols[c]), 0) + v
        coo = full.tocoo()
        assert total == {(r, cols[c]): v for r, c, v in zip(coo.row, coo.col, coo.data)}


def test_split_half_reliability_by_group_and_run_parity(make_config):
    cfg = syn.config(make_config, models=("m1",), rsa={"methods": ["spearman", "paper"], "paper_pairs": 100})
    data = syn.build(cfg)
    words = data["words"]
    rows = pd.DataFrame(aggregate.split_half(cfg, "m1", "fc", words) + aggregate.split_half(cfg, "m1", "fa", words))
    assert set(rows.paradigm) == {"fc", "fa"} and set(rows.method) == {"spearman", "paper"}
    logs = {p: pd.concat([pd.read_parquet(f) for f in sorted(paths.behavior_dir(cfg, "m1", p).glob("part-*"))])
            for p in ("fc", "fa")}
    groups = 8
    for paradigm, half_of in (("fc", lambda d: (d.trial_id % groups) % 2), ("fa", lambda d: d.run % 2)):
        d = logs[paradigm].query("final")
        sims = [cosine(ppmi(_reference_counts(d[half_of(d) == h].to_dict("records"), words)[0])) for h in (0, 1)]
        for method in ("spearman", "paper"):
            r = comparison.compare(sims[0], sims[1], method, n_pairs=100, seed=0, words=words)
            row = rows.query("paradigm == @paradigm and method == @method")
            assert row.r_half.item() == pytest.approx(r, abs=1e-12)
            assert row.reliability.item() == pytest.approx(2 * r / (1 + r), abs=1e-12)
            assert row.ceiling_high.item() == pytest.approx(np.sqrt(2 * r / (1 + r)), abs=1e-12)
        assert rows.query("paradigm == @paradigm").n_trials_a.iloc[0] == (half_of(d) == 0).sum()
    assert rows.query("paradigm == 'fc'").n_trials_a.iloc[0] == rows.query("paradigm == 'fc'").n_trials_b.iloc[0]


def test_vocabulary_word_nan_is_counted_not_dropped(make_config):
    cfg = make_config()
    words = ["dog", "cat", "nan", "milk"]
    paths.vocab_file(cfg).parent.mkdir(parents=True, exist_ok=True)
    paths.vocab_file(cfg).write_text("\n".join(words) + "\n")
    rows = [{"trial_id": 0, "cue_idx": 0, "cue": "dog", "picks": ["nan", "cat"]},
            {"trial_id": 1, "cue_idx": 2, "cue": "nan", "picks": ["milk", "NaN"]},
            {"trial_id": 2, "cue_idx": 1, "cue": "cat", "picks": ["Nan", "na"]}]
    write_part(paths.behavior_dir(cfg, "m", "fc"), _rows_table(rows))
    aggregate.aggregate_one(cfg, "m", "fc", words)
    out = aggregate.load_matrices(cfg, "m", "fc")
    counts = out["counts"].toarray()
    col = out["cols"].index("nan")
    assert counts[0, col] == 1 and counts[1, col] == 1 and "na" not in out["cols"]
    assert counts[2].sum() == 1, "the cue's own name is a cue repeat, dropped as always"


def test_split_half_keeps_every_rotation_of_a_group_in_one_half(make_config):
    from pipeline import behave, trials

    cfg = syn.prepare(make_config(trials={"fa_runs": 1, "fc_orders": 2}, behave={"backend": "fake", "chunk_size": 64,
                                                                             "paradigms": ["fc"]}))
    behave.run(cfg, Options(paradigm="fc"))
    words = [w.strip() for w in paths.vocab_file(cfg).read_text().splitlines()]
    plan = trials.load_trials(cfg, "fc").to_pandas()
    n, m = len(words), 2
    assert len(plan) == 2 * n * m
    rows = aggregate.split_half(cfg, "m", "fc", words)
    per_half = plan.assign(half=(plan.trial_id % m) % 2).groupby("half").size()
    assert (rows[0]["n_trials_a"], rows[0]["n_trials_b"]) == (per_half[0], per_half[1])
    order = trials.fc_order(plan.trial_id, n, m)
    same_group = plan.assign(order=order).groupby(["cue_idx", "group"]).trial_id.apply(lambda t: len({x % m % 2
                                                                                                     for x in t}))
    assert (same_group == 1).all() and set(order) == {0, 1}

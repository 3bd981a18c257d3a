"""RSA against scipy and rsatoolbox, NN@k against brute force, bootstrap and split-half
against direct implementations of their documented schemes, and the stage's resume logic."""

from __future__ import annotations

import _synthetic as syn
import numpy as np
import pandas as pd
import pytest
import scipy.stats as ss
from rsatoolbox.rdm import RDMs
from rsatoolbox.rdm import compare as rsa_compare

from pipeline import aggregate, analysis, comparison, paths, rsa
from pipeline.errors import PipelineError
from pipeline.manifest import Manifest, StaleStageError
from pipeline.similarity import centered_cosine, cosine, ppmi, sample_pairs


def _f32_centered(x, rows=None):
    return centered_cosine(x, rows, compute=np.float32)


def _sym(n, seed, ties=False, dtype=np.float32):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 5))
    s = x @ x.T
    if ties:
        s = np.round(s)
    return s.astype(dtype)


def _rdm(sim_vec):
    return RDMs((1.0 - np.asarray(sim_vec, dtype=np.float64))[None, :])


# ---------------------------------------------------------------- ranks and compare

@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fast_rank_equals_rankdata_with_ties(seed):
    rng = np.random.default_rng(seed)
    v = rng.integers(-3, 4, 2000).astype(np.float32)
    v[:5] = -0.0
    v[5:9] = 0.0
    v[9] = np.inf
    v[10] = -np.inf
    assert np.array_equal(comparison.rank(v), ss.rankdata(v))
    w = rng.standard_normal(5000).astype(np.float32)
    assert np.array_equal(comparison.rank(w), ss.rankdata(w))
    ranks, norm = comparison.Ranker()(v)
    centered = ss.rankdata(v) - ss.rankdata(v).mean()
    assert norm == pytest.approx(np.sqrt(centered @ centered), rel=1e-12)


@pytest.mark.parametrize("v", [[1, 1, 1, 1], [0, 1, 2, 2], [2, 2, 0, 1], [5, 3], [3, 3], [1, 2, 2, 3, 3, 3, 4, 4]])
def test_fast_rank_tie_runs_at_the_edges(v):
    v = np.array(v, dtype=np.float32)
    ranks, norm = comparison.Ranker()(v)
    expected = ss.rankdata(v)
    assert np.array_equal(ranks, expected)
    assert norm == pytest.approx(np.sqrt(np.sum((expected - expected.mean()) ** 2)), abs=1e-12)


def test_ranker_reuses_buffers_correctly():
    ranker = comparison.Ranker()
    a = np.array([3, 1, 2, 2], dtype=np.float32)
    b = np.array([0.5, 0.1, 0.9, 0.7], dtype=np.float32)
    assert np.array_equal(ranker(a)[0], ss.rankdata(a))
    assert np.array_equal(ranker(b)[0], ss.rankdata(b))


@pytest.mark.parametrize("ties", [False, True])
def test_compare_equals_scipy_and_rsatoolbox(ties):
    n = 40
    a, b = _sym(n, 0, ties), _sym(n, 1, ties)
    b = (a + 2 * b).astype(np.float32)
    iu = np.triu_indices(n, 1)
    rho = comparison.compare(a, b, "spearman")
    r = comparison.compare(a, b, "pearson")
    assert rho == pytest.approx(ss.spearmanr(a[iu], b[iu])[0], abs=1e-6)
    assert r == pytest.approx(ss.pearsonr(a[iu].astype(float), b[iu].astype(float))[0], abs=1e-6)
    assert rho == pytest.approx(rsa_compare(_rdm(a[iu]), _rdm(b[iu]), method="spearman")[0, 0], abs=1e-6)
    assert r == pytest.approx(rsa_compare(_rdm(a[iu]), _rdm(b[iu]), method="corr")[0, 0], abs=1e-6)
    assert comparison.compare(a[iu], b[iu], "spearman") == pytest.approx(rho, abs=1e-12)


def test_compare_masks_nan_pairs_like_rsatoolbox():
    n = 30
    a, b = _sym(n, 3, ties=True), _sym(n, 4)
    a[[2, 7]] = np.nan
    a[:, [2, 7]] = np.nan
    iu = np.triu_indices(n, 1)
    va, vb = a[iu], b[iu]
    keep = np.isfinite(va)
    assert keep.sum() == (n - 2) * (n - 3) // 2
    expected = ss.spearmanr(va[keep], vb[keep])[0]
    assert comparison.compare(a, b, "spearman") == pytest.approx(expected, abs=1e-6)
    vb_nan = np.where(keep, vb, np.nan)
    tool = rsa_compare(_rdm(va), _rdm(vb_nan), method="spearman")[0, 0]
    assert comparison.compare(a, b, "spearman") == pytest.approx(tool, abs=1e-6)
    assert comparison.compare(a, b, "pearson") == pytest.approx(
        rsa_compare(_rdm(va), _rdm(vb_nan), method="corr")[0, 0], abs=1e-6)


def test_paper_mode_matches_method_formula():
    """METHOD.md §6: rng.choice(M, size, replace=False), off[i] = i(2N-i-1)//2,
    i = searchsorted(off, k, 'right') - 1, j = i + 1 + (k - off[i]); Pearson on those pairs."""
    n, size, seed = 60, 400, 0
    a, b = _sym(n, 5), _sym(n, 6)
    b = (a + b).astype(np.float32)
    m = n * (n - 1) // 2
    k = np.random.default_rng(seed).choice(m, size, replace=False)
    off = np.array([i * (2 * n - i - 1) // 2 for i in range(n)])
    i = np.searchsorted(off, k, side="right") - 1
    j = i + 1 + (k - off[i])
    assert (i < j).all() and (j < n).all()
    expected = ss.pearsonr(a[i, j].astype(float), b[i, j].astype(float))[0]
    assert comparison.compare(a, b, "paper", n_pairs=size, seed=seed) == pytest.approx(expected, abs=1e-9)
    iu = np.triu_indices(n, 1)
    assert comparison.compare(a[iu], b[iu], "paper", n_pairs=size, seed=seed) == pytest.approx(expected, abs=1e-9)
    assert comparison.compare(a, b, "paper", n_pairs=10**6) == pytest.approx(comparison.compare(a, b, "pearson"), abs=1e-12)


def test_compare_rejects_bad_input():
    with pytest.raises(ValueError, match="method"):
        comparison.compare(np.eye(3), np.eye(3), "kendall")
    with pytest.raises(ValueError, match="upper triangle"):
        comparison.compare(np.ones(4), np.ones(4))


def test_layer_similarity_equals_centered_cosine():
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((50, 16)) + 2).astype(np.float16)
    x[3] = x[:, :].astype(np.float32).mean(axis=0)
    assert np.allclose(_f32_centered(x), centered_cosine(x.astype(np.float64)), atol=2e-6)
    rows = np.arange(0, 50, 2)
    assert np.allclose(_f32_centered(x, rows), centered_cosine(x.astype(np.float64), rows), atol=2e-6)


# ---------------------------------------------------------------- NN@k

def _brute_top(sim, k):
    n = sim.shape[0]
    out = []
    for r in range(n):
        vals = sim[r].astype(np.float64).copy()
        vals[r] = -np.inf
        out.append(set(np.lexsort((np.arange(n), -vals))[:k].tolist()))
    return out


@pytest.mark.parametrize("ties", [False, True])
def test_nn_overlap_equals_brute_force(ties):
    n = 45
    a, b = _sym(n, 7, ties), _sym(n, 8, ties)
    b = (a + b).astype(np.float32)
    if ties:
        b[:, :] = np.maximum(b, 0)
    ks = [1, 3, 10, 44]
    got = comparison.nn_overlap(a, b, ks, chunk=7)
    for k in ks:
        ta, tb = _brute_top(a, k), _brute_top(b, k)
        expected = np.mean([len(ta[r] & tb[r]) / k for r in range(n)])
        assert got[k] == pytest.approx(expected, abs=1e-12)
    assert got[44] == pytest.approx(1.0)


def test_topk_orders_by_value_then_index():
    sim = np.array([[9, 1, 1, 1, 0], [1, 9, 2, 2, 2], [1, 2, 9, 3, 0], [1, 2, 3, 9, 0], [0, 2, 0, 0, 9]],
                   dtype=np.float32)
    top = comparison.topk(sim, 2, chunk=2)
    assert top.tolist() == [[1, 2], [2, 3], [3, 1], [2, 1], [1, 0]]


# ---------------------------------------------------------------- one cell

def _cell_inputs(n=36, layers=3, seed=0):
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((n, 4))
    hidden = np.stack([z @ rng.standard_normal((4, 10)) + rng.standard_normal((n, 10)) + 2
                       for _ in range(layers + 1)]).astype(np.float16)
    fc = np.round(cosine(z + rng.standard_normal((n, 4))), 1).astype(np.float32)
    vec = z @ rng.standard_normal((4, 6)) + rng.standard_normal((n, 6))
    valid = np.ones(n, dtype=bool)
    valid[[4, 11]] = False
    static = cosine(np.where(valid[:, None], vec, 0))
    refs = {"fc": analysis.Reference("fc", fc, np.ones(n, dtype=bool)),
            "static": analysis.Reference("static", static, valid)}
    return hidden, refs, valid


def test_analyse_cell_matches_compare_per_layer_and_masks_missing_words():
    hidden, refs, valid = _cell_inputs()
    rows, nn_rows = analysis.analyse_cell(hidden, refs, ["spearman", "pearson", "paper"], paper_pairs=150, seed=3,
                                     nn_k=[2, 5, 40])
    df = pd.DataFrame(rows)
    assert len(df) == 3 * 2 * 3
    for layer in (1, 2, 3):
        h = centered_cosine(hidden[layer].astype(np.float32))
        for name, ref in refs.items():
            sub = np.ix_(ref.valid, ref.valid)
            for method in ("spearman", "pearson"):
                got = df.query("layer == @layer and reference == @name and method == @method").rsa.item()
                assert got == pytest.approx(comparison.compare(h[sub], ref.sim[sub], method), abs=1e-5)
            masked = np.where(np.outer(ref.valid, ref.valid), ref.sim, np.nan)
            got = df.query("layer == @layer and reference == @name and method == 'paper'")
            assert got.rsa.item() == pytest.approx(comparison.compare(h, masked, "paper", n_pairs=150, seed=3), abs=1e-5)
            nv = int(ref.valid.sum())
            assert got.n_pairs.item() == int(np.isfinite(comparison.pair_vector(masked)[0][
                comparison.pair_index(*sample_pairs(36, 150, 3), 36)]).sum())
            expected_nn = comparison.nn_overlap(h[sub], ref.sim[sub], [2, 5])
            for k in (2, 5):
                got_nn = [r["overlap"] for r in nn_rows if r["layer"] == layer and r["reference"] == name
                          and r["k"] == k]
                assert got_nn == [pytest.approx(expected_nn[k], abs=1e-12)]
            assert df.query("reference == @name").n_words.unique().tolist() == [nv]
    assert {r["k"] for r in nn_rows if r["reference"] == "static"} == {2, 5}
    assert {r["k"] for r in nn_rows if r["reference"] == "fc"} == {2, 5}


def test_bootstrap_follows_documented_scheme():
    """Resample N words with replacement (rng = default_rng([seed, 0xB007])), keep the
    distinct words, correlate on the pairs among them; CIs are the 2.5/97.5 percentiles."""
    hidden, refs, _ = _cell_inputs(n=20, layers=2)
    refs = {"fc": refs["fc"]}
    n_boot, seed = 25, 4
    rows, _ = analysis.analyse_cell(hidden, refs, ["spearman", "pearson"], paper_pairs=10, seed=seed,
                               bootstrap=n_boot)
    df = pd.DataFrame(rows)
    rng = np.random.default_rng([seed, 0xB007])
    draws = [np.unique(rng.integers(0, 20, 20)) for _ in range(n_boot)]
    for layer in (1, 2):
        h = _f32_centered(hidden[layer])
        for method in ("spearman", "pearson"):
            stats = [comparison.compare(h[np.ix_(w, w)], refs["fc"].sim[np.ix_(w, w)], method) for w in draws]
            lo, hi = np.percentile(stats, [2.5, 97.5])
            row = df.query("layer == @layer and method == @method")
            assert row.ci_low.item() == pytest.approx(lo, abs=1e-6)
            assert row.ci_high.item() == pytest.approx(hi, abs=1e-6)
            assert row.ci_low.item() <= row.ci_high.item()


def test_no_bootstrap_gives_nan_intervals():
    hidden, refs, _ = _cell_inputs(n=15, layers=1)
    rows, _ = analysis.analyse_cell(hidden, refs, ["spearman"], paper_pairs=10, seed=0)
    assert all(np.isnan(r["ci_low"]) and np.isnan(r["ci_high"]) for r in rows)


# ---------------------------------------------------------------- split-half

def _counter_counts(cue_idx, picks, words):
    """Plain-Python cue x response counts, with aggregate's cleaning (an independent reference)."""
    cols = {}
    rows, cols_idx = [], []
    for c, trial in zip(cue_idx, picks):
        for p in trial:
            w = str(p).strip().lower()
            if not w or w in ("na", "nan") or not any(ch.isalnum() for ch in w) or w == words[c].lower():
                continue
            rows.append(int(c))
            cols_idx.append(cols.setdefault(w, len(cols)))
    import scipy.sparse as sp
    return sp.csr_matrix((np.ones(len(rows)), (rows, cols_idx)), shape=(len(words), max(len(cols), 1)))


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
        sims = [cosine(ppmi(_counter_counts(d[half_of(d) == h].cue_idx.to_numpy(),
                                            list(d[half_of(d) == h].picks), words))) for h in (0, 1)]
        for method in ("spearman", "paper"):
            r = comparison.compare(sims[0], sims[1], method, n_pairs=100, seed=0, words=words)
            row = rows.query("paradigm == @paradigm and method == @method")
            assert row.r_half.item() == pytest.approx(r, abs=1e-12)
            assert row.reliability.item() == pytest.approx(2 * r / (1 + r), abs=1e-12)
            assert row.ceiling_high.item() == pytest.approx(np.sqrt(2 * r / (1 + r)), abs=1e-12)
        assert rows.query("paradigm == @paradigm").n_trials_a.iloc[0] == (half_of(d) == 0).sum()
    assert rows.query("paradigm == 'fc'").n_trials_a.iloc[0] == rows.query("paradigm == 'fc'").n_trials_b.iloc[0]


# ---------------------------------------------------------------- stage

def test_stage_writes_tables_and_resumes(make_config):
    cfg = syn.config(make_config, rsa={"bootstrap": 5})
    data = syn.build(cfg)
    rsa.run(cfg, syn.opts())
    res = paths.results_dir(cfg)
    df = pd.read_parquet(res / "rsa.parquet")
    n_layers = 4
    assert len(df) == 2 * 2 * n_layers * 5 * 3
    assert set(df.reference) == {"fc", "fa", "static", "encoder", "consensus"}
    assert df.query("reference == 'static'").n_words.unique().tolist() == [29]
    assert df.query("reference == 'fc'").n_words.unique().tolist() == [30]
    row = df.query("model == 'm2' and strategy == 'task_fc' and layer == 3 and reference == 'fa' "
                   "and method == 'spearman'")
    fa = np.load(paths.matrices_dir(cfg, "m2", "fa") / "sim_ppmi.npy")
    h = centered_cosine(data["hidden"]["m2", "task_fc"][3].astype(np.float32))
    assert row.rsa.item() == pytest.approx(comparison.compare(h, fa), abs=1e-5)
    assert (df.ci_low <= df.ci_high).all()
    nn = pd.read_parquet(res / "nn.parquet")
    assert len(nn) == 2 * 2 * n_layers * 5 * 2
    rel = pd.read_parquet(res / "reliability.parquet")
    assert len(rel) == 2 * 2 * 3
    man = Manifest(cfg.run_dir)
    assert man.stage("rsa")["complete"]
    assert man.stage("rsa/m1/meaning")["summary"]["skipped_references"] == {}

    part = paths.results_dir(cfg) / "parts" / "rsa" / "m1" / "meaning.parquet"
    mtime = part.stat().st_mtime_ns
    rsa.run(cfg, syn.opts())
    assert part.stat().st_mtime_ns == mtime

    other = paths.results_dir(cfg) / "parts" / "rsa" / "m2" / "meaning.parquet"
    other_mtime = other.stat().st_mtime_ns
    with Manifest(cfg.run_dir)._locked() as m:
        m["stages"]["rsa/m2/meaning"]["complete"] = False
    rsa.run(cfg, syn.opts())
    assert part.stat().st_mtime_ns == mtime
    assert other.stat().st_mtime_ns != other_mtime
    assert len(pd.read_parquet(res / "rsa.parquet")) == len(df)

    fc_file = paths.matrices_dir(cfg, "m1", "fc") / "sim_ppmi.npy"
    np.save(fc_file, fa)
    with pytest.raises(PipelineError, match=r"sim_ppmi\.npy.*changed since the aggregate/m1/fc stage wrote it.*"
                                            r"aggregate --config test\.toml --model m1 --paradigm fc"):
        rsa.run(cfg, syn.opts())
    man.register([fc_file], "aggregate/m1/fc")  # as if aggregate had rebuilt it from new logs
    rsa.run(cfg, syn.opts())
    new = pd.read_parquet(res / "rsa.parquet").query("model == 'm1' and reference == 'fc'")
    assert not np.allclose(new.rsa, df.query("model == 'm1' and reference == 'fc'").rsa)
    cfg.rsa.nn_k = [3]
    with pytest.raises(StaleStageError):
        rsa.run(cfg, syn.opts())


def test_single_model_skips_consensus_and_narrows_by_model(make_config):
    cfg = syn.config(make_config, models=("solo",), rsa={"methods": ["spearman"], "bootstrap": 0, "nn_k": [3]},
                     hidden={"strategies": ["meaning"]})
    syn.build(cfg)
    rsa.run(cfg, syn.opts(model="solo"))
    df = pd.read_parquet(paths.results_dir(cfg) / "rsa.parquet")
    assert "consensus" not in set(df.reference)
    summary = Manifest(cfg.run_dir).stage("rsa/solo/meaning")["summary"]
    assert "consensus" in summary["skipped_references"]


def test_missing_inputs_name_the_file_and_the_fix(make_config):
    cfg = syn.config(make_config, rsa={"bootstrap": 0}, hidden={"strategies": ["meaning"]})
    syn.build(cfg)
    paths.hidden_file(cfg, "m2", "meaning").unlink()
    with pytest.raises(PipelineError, match=r"m2/meaning\.npy.*hidden --config"):
        rsa.run(cfg, syn.opts())
    (paths.baselines_dir(cfg) / "consensus" / "m1" / "meaning.npy").unlink()
    with pytest.raises(PipelineError, match=r"consensus.*baselines --config"):
        rsa.run(cfg, syn.opts(model="m1"))
    np.save(paths.hidden_file(cfg, "m2", "meaning"), np.zeros((3, 7, 4), dtype=np.float16))
    with pytest.raises(PipelineError, match=r"shape \(3, 7, 4\)"):
        rsa.run(cfg, syn.opts(model="m2"))


def test_paradigm_not_configured_is_skipped_with_a_note(make_config):
    cfg = syn.config(make_config, models=("solo",), behave={"paradigms": ["fc"]}, hidden={"strategies": ["meaning"]},
                     rsa={"methods": ["spearman"], "bootstrap": 0, "nn_k": [3]})
    syn.build(cfg, n_layers=1)
    rsa.run(cfg, syn.opts())
    res = paths.results_dir(cfg)
    assert "fa" not in set(pd.read_parquet(res / "rsa.parquet").reference)
    assert set(pd.read_parquet(res / "reliability.parquet").paradigm) == {"fc"}
    assert "behave.paradigms" in Manifest(cfg.run_dir).stage("rsa/solo/meaning")["summary"]["skipped_references"]["fa"]


# ---------------------------------------------------------------- the authors' 'paper' procedure

def _authors_rsa(layer: np.ndarray, ref: np.ndarray, words: list[str], n_pairs: int, seed: int,
                 ref_valid: np.ndarray | None = None) -> float:
    """METHOD.md §6, written from the text: sort the words alphabetically, center the hidden
    vectors over them, draw `n_pairs` linear indices of the upper triangle with
    default_rng(seed).choice(M, n, replace=False), map k to (i, j) by the row offsets
    i(2N-i-1)/2, and take scipy's pearsonr of the two pair vectors (pairs with a missing
    reference word dropped)."""
    order = sorted(range(len(words)), key=lambda i: words[i])
    h = layer[order].astype(np.float64)
    r = ref[np.ix_(order, order)].astype(np.float64)
    h = h - h.mean(axis=0)
    h /= np.maximum(np.linalg.norm(h, axis=1, keepdims=True), 1e-12)
    n = len(words)
    m = n * (n - 1) // 2
    k = np.random.default_rng(seed).choice(m, size=n_pairs, replace=False)
    off = np.array([i * (2 * n - i - 1) // 2 for i in range(n)])
    i = np.searchsorted(off, k, side="right") - 1
    j = i + 1 + (k - off[i])
    vh = np.einsum("pd,pd->p", h[i], h[j])
    vr = r[i, j]
    if ref_valid is not None:
        ok = ref_valid[order][i] & ref_valid[order][j]
        vh, vr = vh[ok], vr[ok]
    return float(ss.pearsonr(vh, vr)[0])


@pytest.mark.parametrize("n", [1500])
def test_paper_method_equals_the_authors_procedure(n):
    rng = np.random.default_rng(7)
    words = ["".join(rng.choice(list("abcdefghijklmnopqrstuvwxyz"), 6)) + str(i) for i in range(n)]
    assert words != sorted(words)
    z = rng.standard_normal((n, 8))
    hidden = np.stack([z @ rng.standard_normal((8, 24)) + rng.standard_normal((n, 24)) + 1
                       for _ in range(2)]).astype(np.float16)
    ref = cosine(z + 1.5 * rng.standard_normal((n, 8)))
    valid = np.ones(n, dtype=bool)
    valid[rng.choice(n, 40, replace=False)] = False
    refs = {"fc": analysis.Reference("fc", ref, np.ones(n, dtype=bool)), "static": analysis.Reference("static", ref, valid)}
    rows, _ = analysis.analyse_cell(hidden, refs, ["paper"], paper_pairs=500_000, seed=0, words=words)
    got = {r["reference"]: r["rsa"] for r in rows}
    assert n * (n - 1) // 2 > 500_000
    assert got["fc"] == pytest.approx(_authors_rsa(hidden[1], ref, words, 500_000, 0), abs=1e-6)
    assert got["static"] == pytest.approx(_authors_rsa(hidden[1], ref, words, 500_000, 0, valid), abs=1e-6)
    vocab_order, _ = analysis.analyse_cell(hidden, {"fc": refs["fc"]}, ["paper"], paper_pairs=500_000, seed=0)
    assert abs(vocab_order[0]["rsa"] - got["fc"]) > 1e-5  # another order gives other pairs


def test_stage_paper_mode_on_common_words_equals_the_authors_procedure(make_config):
    from pipeline.logs import write_part

    cfg = syn.config(make_config, models=("m1",), hidden={"strategies": ["meaning"]},
                     experiment={"name": "t", "data_dir": str(make_config().experiment.data_dir), "paper_mode": True},
                     rsa={"methods": ["paper"], "paper_pairs": 300, "bootstrap": 0, "nn_k": [3], "split_half": False})
    data = syn.build(cfg)
    words = data["words"]
    # The FA cue "king" loses every answer: in paper mode it leaves every comparison.
    king = words.index("king")
    d = paths.behavior_dir(cfg, "m1", "fa")
    tab = pd.concat([pd.read_parquet(p) for p in sorted(d.glob("part-*"))])
    for p in d.glob("part-*"):
        p.unlink()
    tab.loc[tab.cue_idx == king, "picks"] = pd.Series([["null", "??"]] * int((tab.cue_idx == king).sum()),
                                                      index=tab.index[tab.cue_idx == king])
    import pyarrow as pa

    from pipeline.logs import SCHEMA
    write_part(d, pa.Table.from_pandas(tab, preserve_index=False).select(SCHEMA.names).cast(SCHEMA))
    from pipeline.aggregate import aggregate_one
    aggregate_one(cfg, "m1", "fa", words)
    rsa.run(cfg, syn.opts())
    df = pd.read_parquet(paths.results_dir(cfg) / "rsa.parquet")
    assert set(df.query("reference != 'static'").n_words) == {29}
    assert set(df.query("reference == 'static'").n_words) == {28}  # word 5 has no static vector
    keep = [i for i in range(len(words)) if i != king]
    sub_words = [words[i] for i in keep]
    h = data["hidden"]["m1", "meaning"][2][keep]
    for name in ("fc", "fa"):
        sim = np.load(paths.matrices_dir(cfg, "m1", name) / "sim_ppmi.npy")[np.ix_(keep, keep)]
        got = df.query("reference == @name and layer == 2").rsa.item()
        assert got == pytest.approx(_authors_rsa(h, sim, sub_words, 300, 0), abs=1e-6)
    static = data["static"][keep]
    ok = np.isfinite(static).all(axis=1)
    got = df.query("reference == 'static' and layer == 2").rsa.item()
    assert got == pytest.approx(_authors_rsa(h, cosine(np.where(ok[:, None], static, 0)), sub_words, 300, 0, ok),
                                abs=1e-6)

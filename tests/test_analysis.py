"""analysis: one model x strategy cell (per-layer RSA, masks, bootstrap CIs) against
comparison.compare, and the paper method against the authors' procedure."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scipy.stats as ss

from pipeline import analysis, comparison
from pipeline.similarity import centered_cosine, cosine, sample_pairs


def _f32_centered(x, rows=None):
    return centered_cosine(x, rows, compute=np.float32)


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

"""counts: the streaming counter by hand (cleaning, cue repeats, weights, compaction), the
masked similarity against scipy's cdist, and the outputs written together."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pytest
import scipy.sparse as sp
from scipy.spatial.distance import cdist

from pipeline import counts
from pipeline.counts import OUTPUT_FILES, Counter, masked_similarity, write_outputs
from pipeline.errors import PipelineError
from pipeline.rules import Rules

WORDS = ["apple", "bread", "cat", "dog"]


def _batch(cue_idx, picks):
    return pa.record_batch({"cue_idx": pa.array(cue_idx, pa.int32()),
                            "cue": pa.array([WORDS[i] for i in cue_idx]),
                            "picks": pa.array(picks, pa.list_(pa.string()))})


def test_counter_cleans_and_counts_by_hand():
    c = Counter(WORDS, "fa", Rules(), "test")
    c.add(_batch([0, 0, 1], [[" Pie", "APPLE", "na", "--"], ["pie", "tree"], ["butter", None, "Pie"]]))
    m, cols, st = c.result()
    assert cols == ["butter", "pie", "tree"]
    np.testing.assert_array_equal(m.toarray(), [[0, 2, 1], [1, 1, 0], [0, 0, 0], [0, 0, 0]])
    assert st["dropped_cue_repeats"] == 1 and st["dropped_invalid"] == 3  # "na", "--", the null
    assert st["empty_row_words"] == ["cat", "dog"] and st["row_valid"] == [True, True, False, False]


def test_counter_weighted_and_compacted_in_pieces(monkeypatch):
    monkeypatch.setattr(counts, "_COMPACT_AT", 2)
    c = Counter(WORDS, "norms", Rules(), "test", weighted=True)
    b = _batch([2, 3], [["mouse", "milk"], ["bone"]])
    c.add(b, weights=pa.array([3.0, 0.5, 2.0]))
    c.add(_batch([2], [["mouse"]]), weights=pa.array([1.5]))
    m, cols, _ = c.result()
    assert cols == ["bone", "milk", "mouse"]
    np.testing.assert_allclose(m.toarray()[2:], [[0, 0.5, 4.5], [2.0, 0, 0]])


def test_counter_rejects_a_log_of_another_vocabulary():
    c = Counter(WORDS, "fa", Rules(), "part-0.parquet")
    bad = pa.record_batch({"cue_idx": pa.array([1], pa.int32()), "cue": pa.array(["zebra"]),
                           "picks": pa.array([["x"]], pa.list_(pa.string()))})
    with pytest.raises(PipelineError, match="part-0.parquet: a log row has cue 'zebra'"):
        c.add(bad)


def test_masked_similarity_is_cdist_with_unusable_rows_nan():
    rng = np.random.default_rng(3)
    dense = rng.poisson(1.0, size=(6, 9)).astype(float)
    dense[4] = 0
    valid = dense.any(axis=1)
    sim = masked_similarity(sp.csr_matrix(dense), valid)
    ok = np.flatnonzero(valid)
    np.testing.assert_allclose(sim[np.ix_(ok, ok)], 1 - cdist(dense[ok], dense[ok], "cosine"), atol=1e-6)
    assert np.isnan(sim[4]).all() and np.isnan(sim[:, 4]).all()


def test_write_outputs_writes_every_file(tmp_path):
    c = Counter(WORDS, "fa", Rules(), "test")
    c.add(_batch([0, 1, 2], [["pie"], ["pie", "butter\nmilk"], ["mouse"]]))
    m, cols, st = c.result()
    write_outputs(tmp_path, WORDS, m, cols, st)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(OUTPUT_FILES)
    assert (tmp_path / "cols.txt").read_text().splitlines() == ["butter milk", "mouse", "pie"]
    assert (tmp_path / "rows.txt").read_text().splitlines() == WORDS
    assert json.loads((tmp_path / "stats.json").read_text())["masked_rows"] == 1
    np.testing.assert_array_equal(sp.load_npz(tmp_path / "counts.npz").toarray(), m.toarray())
    sim = np.load(tmp_path / "sim_counts.npy")
    assert sim.dtype == np.float32 and np.isnan(sim[3]).all() and sim[0, 1] == pytest.approx(1 / np.sqrt(2))

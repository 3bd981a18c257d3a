"""The cue x response count matrix and what is derived from it, for trial logs
(`aggregate`) and human norms (`norms`) alike.

`Counter` streams responses into a sparse matrix: each batch is cleaned (METHOD.md §2
"Clean") and dictionary-encoded with pyarrow, mapped to a growing column dictionary and kept
as integer (row, column) codes, summed into a sparse matrix whenever they pile up, so memory
is bounded by the counts, never by the number of responses. `write_outputs` derives PPMI and
the row cosines (`similarity`) and writes the files of `OUTPUT_FILES` atomically.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import scipy.sparse as sp

from .errors import PipelineError
from .paradigms import find as find_paradigm
from .rules import Rules
from .similarity import cosine, ppmi
from .store import atomic_write, atomic_write_bytes, save_npy

_DROP = pa.array(["na", "nan"])
_ALNUM = r"[\p{L}\p{N}]"
_COMPACT_AT = 8_000_000
OUTPUT_FILES = ("counts.npz", "ppmi.npz", "sim_ppmi.npy", "sim_counts.npy", "rows.txt", "cols.txt",
                "stats.json")


class Counter:
    """Streaming cue x response counts, for `aggregate.count_matrix` and `norms.count_norms`."""

    def __init__(self, words: list[str], paradigm: str, rules: Rules, src, weighted: bool = False):
        self.words, self.paradigm, self.rules, self.src = words, paradigm, rules, src
        self.weighted = weighted
        self.pending_w: list[np.ndarray] = []
        self.n = len(words)
        self.vocab = pa.array(words, pa.string())
        self.vocab_clean = pc.utf8_trim_whitespace(pc.utf8_lower(self.vocab))
        self.na = pa.array(rules.na_strings, pa.string()) if rules.na_strings else None
        self.col_words = pa.array([], pa.string())
        self.pending_r: list[np.ndarray] = []
        self.pending_c: list[np.ndarray] = []
        self.pending = 0
        self.acc = sp.csr_matrix((self.n, 0), dtype=np.float64 if weighted else np.int64)
        self.seen = np.zeros(self.n, dtype=bool)
        self.responded = np.zeros(self.n, dtype=bool)
        self.st = {"trials": 0, "raw_responses": 0, "dropped_invalid": 0, "dropped_na_strings": 0,
                   "dropped_na_answers": 0, "dropped_cue_repeats": 0}

    def add(self, batch: pa.RecordBatch, picks: pa.Array | None = None, weights: pa.Array | None = None) -> None:
        """Count one batch: its `picks` column (or `picks`, one list per row), each response
        once, or by its entry of `weights` (aligned with the flattened picks) when weighted."""
        cue_idx = _checked_cues(batch, self.vocab, self.n, self.src)
        self.seen[cue_idx] = True
        self.st["trials"] += batch.num_rows
        picks = batch.column("picks") if picks is None else picks
        if "raw_output" in batch.schema.names:
            picks = self._drop_missing_answers(batch.column("raw_output"), picks)
        flat = pc.list_flatten(picks)
        self.st["raw_responses"] += len(flat)
        if len(flat) == 0:
            return
        parent = np.asarray(pc.list_parent_indices(picks).to_numpy(zero_copy_only=False), dtype=np.int64)
        rows = cue_idx[parent]
        text, keep = self._clean(flat, rows)
        if keep.any():
            w = None
            if self.weighted:
                w = np.asarray(weights.to_numpy(zero_copy_only=False), dtype=np.float64)[keep]
            self._append(rows[keep], text.filter(pa.array(keep)), w)

    def _drop_missing_answers(self, outputs: pa.Array, picks: pa.Array) -> pa.Array:
        """`picks` with the lists of answers the rules read as missing emptied (their responses
        are not counted; the trial still is)."""
        missing = self.rules.missing_answers(self.paradigm, outputs)
        if not pc.any(missing).as_py():
            return picks
        self.st["dropped_na_answers"] += int(pc.sum(missing).as_py())
        empty = pa.scalar([], picks.type)
        return pc.if_else(missing, empty, pc.fill_null(picks, empty))

    def _clean(self, flat: pa.Array, rows: np.ndarray) -> tuple[pa.Array, np.ndarray]:
        """Lowercased, stripped responses and which of them count (METHOD.md §2 "Clean")."""
        text = pc.utf8_trim_whitespace(pc.utf8_lower(flat))
        dropped = pc.and_(pc.is_in(text, value_set=_DROP), pc.invert(pc.is_in(text, value_set=self.vocab_clean)))
        valid = pc.fill_null(pc.and_(pc.match_substring_regex(text, _ALNUM), pc.invert(dropped)), False)
        if self.na is not None:
            is_na = pc.fill_null(pc.is_in(flat, value_set=self.na), False)
            self.st["dropped_na_strings"] += int(pc.sum(pc.and_(is_na, valid)).as_py() or 0)
            valid = pc.and_(valid, pc.invert(is_na))
        repeat = pc.fill_null(pc.equal(text, self.vocab_clean.take(pa.array(rows))), False)
        keep = np.asarray(pc.and_(valid, pc.invert(repeat)).to_numpy(zero_copy_only=False), dtype=bool)
        valid_np = np.asarray(valid.to_numpy(zero_copy_only=False), dtype=bool)
        self.responded[rows[valid_np]] = True
        self.st["dropped_invalid"] += int((~valid_np).sum())
        self.st["dropped_cue_repeats"] += int((valid_np & ~keep).sum())
        return text, keep

    def _append(self, rows: np.ndarray, kept: pa.Array, weights: np.ndarray | None = None) -> None:
        enc = pc.dictionary_encode(kept)
        known = pc.index_in(enc.dictionary, value_set=self.col_words)
        new = enc.dictionary.filter(pc.is_null(known))
        code_of_entry = np.asarray(pc.fill_null(known, -1).to_numpy(zero_copy_only=False), dtype=np.int64)
        if len(new):
            code_of_entry[code_of_entry < 0] = np.arange(len(self.col_words), len(self.col_words) + len(new))
            self.col_words = pa.concat_arrays([self.col_words, new])
        indices = np.asarray(enc.indices.to_numpy(zero_copy_only=False), dtype=np.int64)
        self.pending_r.append(rows.astype(np.int32))
        self.pending_c.append(code_of_entry[indices].astype(np.int32))
        if self.weighted:
            self.pending_w.append(weights)
        self.pending += len(rows)
        if self.pending >= _COMPACT_AT:
            self._compact()

    def _compact(self) -> None:
        self.acc = _compact(self.acc, self.pending_r, self.pending_c, self.n, len(self.col_words),
                            self.pending_w if self.weighted else None)
        self.pending_r, self.pending_c, self.pending_w, self.pending = [], [], [], 0

    def result(self) -> tuple[sp.csr_matrix, list[str], dict]:
        self._compact()
        words, acc = self.words, self.acc
        names = self.col_words.to_pylist()
        order = np.asarray(pc.sort_indices(self.col_words).to_numpy(zero_copy_only=False), dtype=np.int64)
        counts = acc[:, order].tocsr() if len(names) else acc
        counts.sort_indices()
        row_sums = np.asarray(counts.sum(axis=1)).ravel()
        empty = [words[i] for i in np.flatnonzero(row_sums == 0)]
        if self.rules.paper:
            par = find_paradigm(self.paradigm)
            row_valid = self.seen if par is not None and par.rows_by_trial else self.responded
        else:
            row_valid = row_sums > 0
        masked = [words[i] for i in np.flatnonzero(~row_valid)]
        total = float(counts.sum()) if self.weighted else int(counts.sum())
        st = {**self.st, "picks": total, "responses": len(names), "nonzero_cells": int(counts.nnz),
              "empty_rows": len(empty), "empty_row_words": empty, "masked_rows": len(masked),
              "masked_row_words": masked, "row_valid": row_valid.tolist(), "rules": self.rules.name}
        return counts, [names[i] for i in order], st


def masked_similarity(m: sp.csr_matrix, row_valid) -> np.ndarray:
    """Row cosines (`similarity.cosine`) with the rows and columns of unusable cues set to NaN."""
    sim = cosine(m)
    bad = ~np.asarray(row_valid, dtype=bool)
    if bad.any():
        sim[bad, :] = np.nan
        sim[:, bad] = np.nan
    return sim


def _checked_cues(batch: pa.RecordBatch, vocab: pa.Array, n: int, src) -> np.ndarray:
    idx_arr = batch.column("cue_idx")
    if idx_arr.null_count:
        raise PipelineError(f"{src}: a final log row has no cue_idx; the log is corrupt: delete the "
                            f"damaged part and re-run behave to redo its trials")
    idx = np.asarray(idx_arr.to_numpy(zero_copy_only=False), dtype=np.int64)
    bad = (idx < 0) | (idx >= n)
    if bad.any():
        raise PipelineError(f"{src}: cue_idx {int(idx[bad][0])} is outside the run's vocabulary of {n} words: "
                            f"the log was written for another vocabulary; use a new experiment.name or "
                            f"delete these logs and re-run behave")
    same = pc.equal(batch.column("cue"), vocab.take(pa.array(idx)))
    if not pc.all(pc.fill_null(same, False)).as_py():
        first = int(np.flatnonzero(~np.asarray(pc.fill_null(same, False).to_numpy(zero_copy_only=False)))[0])
        raise PipelineError(f"{src}: a log row has cue {batch.column('cue')[first].as_py()!r} at cue_idx "
                            f"{int(idx[first])}, where the run's vocabulary has {vocab[int(idx[first])].as_py()!r}: "
                            f"the log was written for another vocabulary; use a new experiment.name or "
                            f"delete these logs and re-run behave")
    return idx


def _compact(acc: sp.csr_matrix, rows: list[np.ndarray], cols: list[np.ndarray], n: int, ncols: int,
             weights: list[np.ndarray] | None = None) -> sp.csr_matrix:
    if acc.shape[1] < ncols:
        acc = sp.csr_matrix((acc.data, acc.indices, acc.indptr), shape=(n, ncols))
    if not rows:
        return acc
    r = np.concatenate(rows)
    c = np.concatenate(cols)
    data = np.concatenate(weights) if weights is not None else np.ones(r.size, dtype=np.int64)
    new = sp.csr_matrix((data, (r, c)), shape=(n, ncols))
    new.sum_duplicates()
    return (acc + new).tocsr()


def write_outputs(out: Path, words: list[str], counts: sp.csr_matrix, cols: list[str], stats: dict,
                  similarity=None) -> None:
    """Write every output atomically (`store.atomic_write`): readers never see half a file; a
    crash before the manifest record leaves the stage incomplete and the next run redoes it.

    Args:
        similarity: function of ``"ppmi"`` / ``"counts"`` giving the two N x N similarity
            matrices (`Paradigm.similarity`); default the masked cosines of PPMI and count rows.
            Keys of `stats` that start with ``_`` are working data, not written.
    """
    pp = ppmi(counts)
    valid = stats["row_valid"]
    public = {k: v for k, v in stats.items() if not k.startswith("_")}
    text = {"rows.txt": "".join(w + "\n" for w in words), "cols.txt": "".join(_one_line(c) + "\n" for c in cols),
            "stats.json": json.dumps(public, indent=2, ensure_ascii=False) + "\n"}
    _save_npz(out / "counts.npz", counts.astype(np.int32 if counts.dtype.kind in "iu" else np.float32))
    _save_npz(out / "ppmi.npz", pp.astype(np.float32))
    if similarity is None:
        save_npy(out / "sim_ppmi.npy", masked_similarity(pp, valid))
        save_npy(out / "sim_counts.npy", masked_similarity(counts, valid))
    else:
        save_npy(out / "sim_ppmi.npy", similarity("ppmi"))
        save_npy(out / "sim_counts.npy", similarity("counts"))
    for name, body in text.items():
        atomic_write_bytes(out / name, body.encode("utf-8"))


def _save_npz(path: Path, m: sp.spmatrix) -> None:
    def write(tmp):
        with open(tmp, "wb") as f:  # a file object: given a path, save_npz would append ".npz"
            sp.save_npz(f, m, compressed=False)
    atomic_write(path, write)


def _one_line(s: str) -> str:
    return s.replace("\r", " ").replace("\n", " ")

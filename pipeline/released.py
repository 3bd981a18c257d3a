"""`released` stage: the authors' released trials as this project's own trial logs.

The authors published every trial of the paper's 8 models ("From Associations to Activations —
LLM Behavioral Association Dataset", Hugging Face, CC BY 4.0): `forced_choice/<model>.parquet`
(one row per trial: ``trial_id, input, candidates, output, extracted_1, extracted_2, pick_1,
pick_2``) and `free_association/<model>.parquet` (one row per associate: ``run, input,
association, position``). A `[[released]]` entry points at the user's local copy (nothing is
shipped or downloaded) and names the models; each becomes a behavior-only model
``<prefix>:<model>`` (`config.ReleasedModelCfg`) whose logs this stage writes in the layout
`behave` writes (`logs.SCHEMA`), under `behavior/<prefix>:<model>/<fc|fa>/`, with the manifest
record `behave/<model>/<paradigm>`. From there aggregate, rsa (the `fc:paper:...` references,
`behavior_rsa`, split-half reliability), validity (position bias, from the released candidate
order) and export treat them as any model.

FC rows are checked against the run's FC plan (`configs/paper.toml` builds the paper's): a
trial id outside the plan refuses the file; a row whose cue (`input`) or candidate group (as a
set) differs from the plan's trial is skipped and counted, and more than
`released.max_mismatch` of the rows so counted refuses the file (the plan is then not the
authors': another vocabulary order or trial seed). The released candidate order is kept (the
position diagnostics read it); a group in another order than the plan's is counted
(`order_differs`). Picks are the authors' (`pick_1`, `pick_2`: their validated picks, NA when
invalid), each checked to be one of the trial's candidates and not the cue. The status of a
trial follows the project's codes (`parse.STATUSES`), derived from the authors' extraction.
The release keeps only the final answer of each trial, so a released log has one attempt per
trial (``attempt_kind = "released"``) and no token counts.

FA rows (one per associate) become one log row per (cue, run) of the plan, associates in
`position` order, the first `trials.fa_associates` kept; a cue or run outside the plan refuses
the file; a trial without released associates is logged with none. The release has no raw FA
answers, so `raw_output` is rebuilt from the associates (``output: a, b, c.``), which parses
back to the same list.

Files are read in streamed batches (`pyarrow.parquet.ParquetFile.iter_batches`) and written
as parts of `_PART_ROWS` rows into a hidden directory that replaces the log only when the
import is complete. The record's upstream is the file's identity (size, mtime, a hash of its
first and last MiB), so a finished import is skipped until the file changes (``--force``
redoes it). An older import of another file or other settings is moved aside, never deleted;
one of the same file (``--force``), which the file reproduces, is replaced.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from . import keys, logs, paths
from .config import Config, ReleasedModelCfg
from .errors import PipelineError
from .manifest import Manifest, StageLock
from .options import Options
from .trials import checked_plan_file, plan_fingerprint
from .vocab import load_run_vocab

log = logging.getLogger(__name__)

FC_COLUMNS = ("trial_id", "input", "candidates", "output", "extracted_1", "extracted_2", "pick_1", "pick_2")
FA_COLUMNS = ("run", "input", "association", "position")
FOLDERS = {"fc": "forced_choice", "fa": "free_association"}
_VERSION = 1
_BATCH = 16_384
_PART_ROWS = 65_536
_QUICK = 1 << 20
_DATASET = ("the authors' dataset \"From Associations to Activations — LLM Behavioral Association Dataset\" "
            "(Hugging Face, CC BY 4.0; README \"The paper's released trials\")")


def source_file(cfg: Config, model: ReleasedModelCfg, paradigm: str) -> Path:
    """The released Parquet file of one model and paradigm in the user's local copy."""
    return Path(cfg.released[model.entry].path) / FOLDERS[paradigm] / f"{model.source}.parquet"


def file_identity(path: Path) -> dict:
    """What makes an import stale: size, mtime and a SHA-256 of the first and last MiB."""
    st = path.stat()
    h = hashlib.sha256()
    with open(path, "rb") as f:
        h.update(f.read(_QUICK))
        if st.st_size > _QUICK:
            f.seek(max(_QUICK, st.st_size - _QUICK))
            h.update(f.read(_QUICK))
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "quick_sha256": h.hexdigest()[:16]}


def log_inputs(cfg: Config, model: ReleasedModelCfg, paradigm: str) -> dict:
    """The settings of an imported log (what `behave.behave_inputs` gives for a released model)."""
    d = {"format": 1, "released": _VERSION, "plan": plan_fingerprint(cfg, paradigm), "source": model.source,
         "paradigm": paradigm}
    if paradigm == "fc":
        d["max_mismatch"] = cfg.released[model.entry].max_mismatch
    else:
        d["k"] = cfg.trials.fa_associates
    return d


def run(cfg: Config, opts) -> None:
    """`released` stage: import every released model's FC and FA file (or the ones `--model`,
    `--paradigm` select); a finished import of an unchanged file is skipped, ``--force`` redoes it."""
    o = Options.of(opts)
    models = [m for m in cfg.models if isinstance(m, ReleasedModelCfg)]
    if o.model is not None:
        if o.model not in {m.name for m in models}:
            cfg.model(o.model)
            raise PipelineError(f"--model {o.model}: not a model of a [[released]] entry in {cfg.source} (released "
                                f"models: {', '.join(m.name for m in models) or 'none'}); its logs come from behave")
        models = [m for m in models if m.name == o.model]
    if not models:
        log.info("released: %s has no [[released]] entries; nothing to import", cfg.source)
        return
    words = load_run_vocab(cfg)
    for m in models:
        left = [p for p in cfg.released[m.entry].paradigms if p not in cfg.behave.paradigms]
        if left:
            log.info("released %s: %s not imported: behave.paradigms does not include %s", m.name,
                     ", ".join(left), "it" if len(left) == 1 else "them")
        for paradigm in cfg.paradigms_of(m):
            if o.paradigm in (None, paradigm):
                import_one(cfg, m, paradigm, words, force=o.force)


def import_one(cfg: Config, model: ReleasedModelCfg, paradigm: str, words: list[str], force: bool = False) -> dict:
    """Import one released file as the trial log of `model`/`paradigm` (manifest-aware).

    Returns:
        The summary recorded in the manifest (`behave.summarize` plus ``released``: the file,
        rows read and imported, and what was skipped or refused and why).

    Raises:
        PipelineError: the file is missing, unreadable, lacks a column, has a field of the wrong
            shape or rows outside the plan, or too many rows off the plan; one line naming the
            file. Nothing already imported is touched then.
    """
    from .behave import summarize

    path = source_file(cfg, model, paradigm)
    if not path.is_file():
        raise PipelineError(f"{path}: no such file; released[{model.entry}].path in {cfg.source} must be a local copy "
                            f"of {_DATASET} holding {FOLDERS[paradigm]}/{model.source}.parquet (check "
                            f"released[{model.entry}].models, or drop '{paradigm}' from its paradigms)")
    man = Manifest(cfg.run_dir)
    key = keys.behave(model.name, paradigm)
    step = man.step(key, log_inputs(cfg, model, paradigm), file_identity(path), replace_stale=True)
    if not force and step.done():
        log.info("released: %s is imported from %s, skipping", key, path)
        return man.summary(key) or {}
    final = paths.behavior_dir(cfg, model.name, paradigm)
    with StageLock(final.parent / f".{paradigm}.import.lock", f"the import of {path}"):
        old = man.stage(key) or {}
        same = bool(old.get("complete")) and old.get("inputs") == step.fp and old.get("upstream") == step.up
        tmp = final.parent / f".{paradigm}.importing"
        shutil.rmtree(tmp, ignore_errors=True)
        t0 = time.perf_counter()
        try:
            stats = (_import_fc if paradigm == "fc" else _import_fa)(cfg, model, path, words, tmp)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        step.start()
        if final.exists() and same:
            shutil.rmtree(final)
        elif final.exists():
            stamp = time.strftime('%Y%m%d-%H%M%S')
            aside = next(a for i in range(1, 10_000) if not (a := final.with_name(
                f"{paradigm}.stale-{stamp}" + (f"-{i}" if i > 1 else ""))).exists())
            os.rename(final, aside)
            log.warning("released: %s: the previous import (of another file or settings) was moved to %s (not "
                        "deleted)", key, aside)
        os.replace(tmp, final)
        summary = summarize(final, paradigm, cfg)
        summary.update({k: None for k in ("first_try_ok", "ok_by_attempt") if k in summary})
        summary.update(requests=None, prompt_tokens=None, output_tokens=None,
                       released={"file": str(path), **stats, "seconds": round(time.perf_counter() - t0, 2)})
        step.complete(logs.list_parts(final), summary)
    log.info("released: %s <- %s: %d trials (%s), compliance %.1f%%, in %.1f s", key, path, summary["n_trials"],
             ", ".join(f"{k} {v}" for k, v in stats.items() if k != "rows" and v), 100 * (summary["compliance"] or 0),
             time.perf_counter() - t0)
    return summary


# ---------------------------------------------------------------- reading

def _open(path: Path, columns: tuple[str, ...]) -> pq.ParquetFile:
    """The file opened, with every required column present."""
    try:
        pf = pq.ParquetFile(path)
        names = pf.schema_arrow.names
    except (pa.ArrowException, OSError) as e:
        raise PipelineError(f"{path}: unreadable as Parquet ({e}); the file is damaged or truncated: download it "
                            f"again") from None
    missing = [c for c in columns if c not in names]
    if missing:
        raise PipelineError(f"{path}: column{'s' if len(missing) > 1 else ''} {', '.join(map(repr, missing))} "
                            f"missing (has {', '.join(names)}); a released file has {', '.join(columns)}")
    return pf


def _batches(pf: pq.ParquetFile, path: Path, columns: tuple[str, ...]):
    try:
        yield from pf.iter_batches(batch_size=_BATCH, columns=list(columns))
    except (pa.ArrowException, OSError) as e:
        raise PipelineError(f"{path}: reading failed ({e}); the file is damaged or truncated: download it "
                            f"again") from None


def _ints(batch: pa.RecordBatch, name: str, path: Path) -> np.ndarray:
    col = batch.column(name)
    if not pa.types.is_integer(col.type):
        raise PipelineError(f"{path}: column '{name}' holds {col.type}, not integers")
    if col.null_count:
        raise PipelineError(f"{path}: column '{name}' has {col.null_count} empty value(s); every row needs one")
    return col.to_numpy().astype(np.int64)


def _strings(batch: pa.RecordBatch, name: str, path: Path) -> pa.Array:
    col = batch.column(name)
    if pa.types.is_null(col.type) or pa.types.is_large_string(col.type):
        return col.cast(pa.string())
    if not pa.types.is_string(col.type):
        raise PipelineError(f"{path}: column '{name}' holds {col.type}, not text")
    return col


def _candidates(batch: pa.RecordBatch, path: Path, first_row: int) -> pa.ListArray:
    """The `candidates` column as a list of stripped words, from a list or its string form: the
    words joined by commas as the authors' CSV stored them (``a, b, c``), bracketed or not, quoted
    or not (``[a, b]``, ``['a', 'b']``, ``["a", "b"]``). A string of fewer than two words is none
    of these (every trial has at least two candidates)."""
    col = batch.column("candidates")
    kind = col.type
    if (pa.types.is_list(kind) or pa.types.is_large_list(kind)) and \
            (pa.types.is_string(kind.value_type) or pa.types.is_large_string(kind.value_type)):
        lists = col
    elif pa.types.is_string(kind) or pa.types.is_large_string(kind):
        text = pc.utf8_trim_whitespace(col.cast(pa.string()))
        opened, closed = pc.starts_with(text, "["), pc.ends_with(text, "]")
        inner = pc.if_else(pc.and_(opened, closed), pc.utf8_slice_codeunits(text, 1, -1), text)
        lists = pc.split_pattern(inner, ",")
        ok = pc.and_(pc.equal(opened, closed), pc.greater_equal(pc.list_value_length(lists), 2))
        bad = np.flatnonzero(~pc.fill_null(ok, True).to_numpy(zero_copy_only=False))
        if bad.size:
            raise PipelineError(f"{path}: 'candidates' of row {first_row + int(bad[0])} is '{text[int(bad[0])]}' "
                                f"({bad.size} such rows in this batch): neither a list of words nor its string "
                                f"form 'a, b, ...' (or ['a', 'b', ...])")
    else:
        raise PipelineError(f"{path}: column 'candidates' holds {kind}: neither a list of words nor its string form "
                            f"'a, b, ...' (or ['a', 'b', ...])")
    if lists.null_count:
        row = first_row + int(np.flatnonzero(pc.is_null(lists).to_numpy(zero_copy_only=False))[0])
        raise PipelineError(f"{path}: 'candidates' of row {row} is empty (null): neither a list of words nor its "
                            f"string form 'a, b, ...'")
    lengths = pc.list_value_length(lists).to_numpy(zero_copy_only=False).astype(np.int64)
    words = pc.utf8_trim(pc.list_flatten(lists).cast(pa.string()), " \t\n'\"")
    return pa.ListArray.from_arrays(pa.array(_offsets(lengths), pa.int32()), words)


def _offsets(lengths: np.ndarray) -> np.ndarray:
    out = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=out[1:])
    return out


def _index(values: pa.Array, vocab: pa.Array) -> np.ndarray:
    """Vocabulary index of each string, -1 where it is not a vocabulary word (or null)."""
    return pc.fill_null(pc.index_in(values, value_set=vocab), -1).to_numpy(zero_copy_only=False).astype(np.int64)


def _sorted_rows(flat: np.ndarray, lengths: np.ndarray, n_words: int) -> np.ndarray:
    """Each row's values sorted within the row (rows as given by `lengths`)."""
    rows = np.repeat(np.arange(len(lengths), dtype=np.int64), lengths)
    return (np.sort(rows * (n_words + 1) + flat + 1) % (n_words + 1) - 1).astype(np.int64)


def _pairs(a: pa.Array, b: pa.Array, keep_a: np.ndarray, keep_b: np.ndarray) -> pa.ListArray:
    """Rows ``[a_i, b_i]`` with only the kept ones, in that order."""
    n = len(a)
    both = pa.concat_arrays([a.cast(pa.string()), b.cast(pa.string())])
    keep = np.stack([keep_a, keep_b], axis=1)
    idx = np.stack([np.arange(n), np.arange(n) + n], axis=1)[keep]
    return pa.ListArray.from_arrays(pa.array(_offsets(keep.sum(axis=1)), pa.int32()), both.take(pa.array(idx)))


def _log_table(n: int, **cols) -> pa.Table:
    """Log rows (`logs.SCHEMA`) with the columns an import does not know left empty."""
    base = {"run": pa.nulls(n, pa.int16()), "attempt": pa.array(np.zeros(n, np.int16)),
            "attempt_kind": pa.array(["released"] * n, pa.string()), "final": pa.array(np.ones(n, bool)),
            "seed": pa.nulls(n, pa.int64()), "prompt_sha": pa.nulls(n, pa.string()),
            "n_prompt_tokens": pa.nulls(n, pa.int32()), "n_output_tokens": pa.nulls(n, pa.int32()),
            "latency_s": pa.nulls(n, pa.float32()), "candidates": pa.nulls(n, pa.list_(pa.string()))}
    base.update(cols)
    return pa.table({f.name: base[f.name] for f in logs.SCHEMA}).cast(logs.SCHEMA)


class _Parts:
    """Log rows gathered into parts of about `_PART_ROWS` rows, written to `directory`."""

    def __init__(self, directory: Path):
        self.directory, self.pending, self.rows, self.written = directory, [], 0, 0

    def add(self, table: pa.Table) -> None:
        self.pending.append(table)
        self.rows += table.num_rows
        if self.rows >= _PART_ROWS:
            self.flush()

    def flush(self) -> None:
        if self.pending:
            logs.write_part(self.directory, pa.concat_tables(self.pending))
            self.written += self.rows
            self.pending, self.rows = [], 0


# ---------------------------------------------------------------- FC

def _fc_plan(cfg: Config, vocab: pa.Array) -> dict:
    """The FC plan as vocabulary indices, read in batches: cue per trial, candidate offsets and
    candidates in plan order (int16 where the vocabulary allows: 50 MB for the paper's plan)."""
    path = checked_plan_file(cfg, "fc")
    rebuild = keys.command(cfg, "trials", force=True)
    n_words = len(vocab)
    slots = n_words * (n_words - 1) * cfg.trials.fc_orders
    try:
        pf = pq.ParquetFile(path)
        n = pf.metadata.num_rows
        cue, lengths = np.empty(n, np.int32), np.empty(n, np.int32)
        flat = np.empty(slots, np.int16 if n_words < np.iinfo(np.int16).max else np.int32)
        at = pos = 0
        for b in pf.iter_batches(batch_size=_BATCH, columns=["trial_id", "cue_idx", "candidates"]):
            if not np.array_equal(b.column("trial_id").to_numpy(), np.arange(at, at + b.num_rows)):
                raise PipelineError(f"{path}: trial ids are not 0..{n - 1} in order; rebuild the plan with "
                                    f"`{rebuild}`")
            cue[at:at + b.num_rows] = b.column("cue_idx").to_numpy()
            lengths[at:at + b.num_rows] = pc.list_value_length(b.column("candidates")).to_numpy()
            idx = _index(pc.list_flatten(b.column("candidates")), vocab)
            if pos + idx.size > slots:
                break
            flat[pos:pos + idx.size] = idx
            at, pos = at + b.num_rows, pos + idx.size
    except (pa.ArrowException, OSError) as e:
        raise PipelineError(f"{path}: unreadable trial plan ({e}); rebuild it with `{rebuild}`") from None
    if at != n or pos != slots:
        raise PipelineError(f"{path}: not a plan of {n_words} words (every other word once per cue); rebuild it "
                            f"with `{rebuild}`")
    return {"n": n, "cue": cue, "lengths": lengths, "offsets": _offsets(lengths), "flat": flat}


def _import_fc(cfg: Config, model: ReleasedModelCfg, path: Path, words: list[str], out: Path) -> dict:
    vocab = pa.array(words, pa.string())
    pf = _open(path, FC_COLUMNS)
    total = pf.metadata.num_rows
    limit = cfg.released[model.entry].max_mismatch
    plan = _fc_plan(cfg, vocab)
    seen = np.zeros(plan["n"], dtype=bool)
    stats = dict.fromkeys(("rows", "imported", "cue_mismatch", "group_mismatch", "duplicate_ids", "order_differs",
                           "picks_off_list"), 0)
    example = None
    parts = _Parts(out)
    first = 0
    for batch in _batches(pf, path, FC_COLUMNS):
        nb = batch.num_rows
        ids = _ints(batch, "trial_id", path)
        outside = (ids < 0) | (ids >= plan["n"])
        if outside.any():
            raise PipelineError(f"{path}: {int(outside.sum())} row(s) of a batch have trial ids outside the FC plan of "
                                f"{cfg.source} (0..{plan['n'] - 1}), e.g. row {first + int(np.argmax(outside))}: "
                                f"trial_id {int(ids[outside][0])}; the file belongs to another plan (vocabulary or "
                                f"trials.fc_candidates): use the [vocab] and [trials] of configs/paper.toml")
        cue_text = _strings(batch, "input", path)
        cue = _index(cue_text, vocab)
        lists = _candidates(batch, path, first)
        lengths = pc.list_value_length(lists).to_numpy().astype(np.int64)
        flat = _index(pc.list_flatten(lists), vocab)
        cue_ok = cue == plan["cue"][ids]
        same_len = lengths == plan["lengths"][ids]
        group_ok = same_len.copy()
        in_order = same_len.copy()
        rows = np.flatnonzero(same_len)
        if rows.size:
            lens = lengths[rows]
            mine = flat if rows.size == nb else flat[np.repeat(same_len, lengths)]
            within = np.arange(mine.size) - np.repeat(_offsets(lens)[:-1], lens)
            theirs = plan["flat"][np.repeat(plan["offsets"][ids[rows]], lens) + within].astype(np.int64)
            slot_row = np.repeat(np.arange(rows.size), lens)
            differs = _sorted_rows(mine, lens, len(words)) != _sorted_rows(theirs, lens, len(words))
            differs = np.bincount(slot_row, weights=differs, minlength=rows.size) > 0
            moved = np.bincount(slot_row, weights=mine != theirs, minlength=rows.size) > 0
            group_ok[rows] = ~differs
            in_order[rows] = ~moved
        _, first_of = np.unique(ids, return_index=True)
        fresh = np.zeros(nb, dtype=bool)
        fresh[first_of] = True
        fresh &= ~seen[ids]
        matches = cue_ok & group_ok
        stats["cue_mismatch"] += int((~cue_ok).sum())
        stats["group_mismatch"] += int((cue_ok & ~group_ok).sum())
        stats["duplicate_ids"] += int((matches & ~fresh).sum())
        stats["order_differs"] += int((matches & fresh & ~in_order).sum())
        if example is None and not matches.all():
            i = int(np.argmin(matches))
            example = (f"row {first + i}, trial {int(ids[i])}: cue '{cue_text[i]}' (plan: "
                       f"{words[int(plan['cue'][ids[i]])]!r}), candidates {lists[i]}")
        off_plan = stats["cue_mismatch"] + stats["group_mismatch"]
        if off_plan > limit * total:
            raise _off_plan(cfg, model, path, off_plan, total, stats, example)
        keep = matches & fresh
        seen[ids[keep]] = True
        stats["rows"] += nb
        first += nb
        if keep.any():
            parts.add(_fc_rows(batch.filter(pa.array(keep)), ids[keep], cue[keep], lists.filter(pa.array(keep)),
                               flat[np.repeat(keep, lengths)], vocab, path, stats))
    parts.flush()
    off_plan = stats["cue_mismatch"] + stats["group_mismatch"]
    if off_plan:
        log.warning("released: %s: %d of %d rows do not match the FC plan and were skipped (%s; e.g. %s)", path,
                    off_plan, stats["rows"], _counts(stats), example)
    stats["imported"] = parts.written
    stats["missing_trials"] = int(plan["n"] - seen.sum())
    if stats["missing_trials"]:
        log.warning("released: %s: %d of the plan's %d FC trials have no row in the file", path,
                    stats["missing_trials"], plan["n"])
    return stats


def _counts(stats: dict) -> str:
    return ", ".join(f"{k.replace('_', ' ')}: {v}" for k, v in stats.items() if k.endswith("mismatch") and v)


def _off_plan(cfg: Config, model: ReleasedModelCfg, path: Path, n: int, total: int, stats: dict, example
              ) -> PipelineError:
    return PipelineError(f"{path}: {n:,} of its {total:,} rows ({n / total:.1%}) do not match the FC plan of "
                         f"{cfg.source} ({_counts(stats)}; e.g. {example}), more than released[{model.entry}]."
                         f"max_mismatch = {cfg.released[model.entry].max_mismatch}: the run's vocabulary order or "
                         f"trials.fc_seed / fc_candidates are not the authors'; use the [vocab] and [trials] of "
                         f"configs/paper.toml")


def _fc_rows(batch: pa.RecordBatch, ids: np.ndarray, cue: np.ndarray, lists: pa.ListArray, flat: np.ndarray,
             vocab: pa.Array, path: Path, stats: dict) -> pa.Table:
    """Log rows of the FC rows that match the plan: the authors' valid picks (a pick that is
    not one of the trial's candidates, or is the cue, is dropped and counted), the extracted
    strings, and a status as `parse.parse_fc` would give it."""
    n = batch.num_rows
    lengths = pc.list_value_length(lists).to_numpy().astype(np.int64)
    slot_row = np.repeat(np.arange(n), lengths)
    valid = []
    for name in ("pick_1", "pick_2"):
        pick = _strings(batch, name, path)
        idx = _index(pick, vocab)
        listed = (np.bincount(slot_row, weights=np.repeat(idx, lengths) == flat, minlength=n) > 0) & (idx >= 0)
        ok = listed & (idx != cue)
        stats["picks_off_list"] += int((pc.is_valid(pick).to_numpy(zero_copy_only=False) & ~ok).sum())
        valid.append(ok)
    p1, p2 = (_strings(batch, c, path) for c in ("pick_1", "pick_2"))
    valid[1] &= ~(valid[0] & pc.fill_null(pc.equal(p1, p2), False).to_numpy(zero_copy_only=False))
    e1, e2 = (_strings(batch, c, path) for c in ("extracted_1", "extracted_2"))
    has1, has2 = (pc.is_valid(e).to_numpy(zero_copy_only=False) for e in (e1, e2))
    output = _strings(batch, "output", path)
    cue_text = _strings(batch, "input", path)
    blank = pc.fill_null(pc.equal(pc.utf8_trim_whitespace(output), ""), True).to_numpy(zero_copy_only=False)
    cue_l = pc.utf8_lower(cue_text)
    said_cue = np.zeros(n, dtype=bool)
    for e in (e1, e2):
        said_cue |= pc.fill_null(pc.equal(pc.utf8_lower(pc.utf8_trim_whitespace(e)), cue_l), False).to_numpy(
            zero_copy_only=False)
    same = pc.fill_null(pc.equal(pc.utf8_lower(pc.utf8_trim_whitespace(e1)),
                                 pc.utf8_lower(pc.utf8_trim_whitespace(e2))), False).to_numpy(zero_copy_only=False)
    status = np.select([valid[0] & valid[1], blank, ~has1 & ~has2, said_cue, same & (valid[0] | valid[1])],
                       ["ok", "empty", "unparseable", "cue_repeat", "duplicate"], "not_in_list")
    return _log_table(n, trial_id=pa.array(ids), cue_idx=pa.array(cue.astype(np.int32)), cue=cue_text,
                      candidates=lists, raw_output=output, picks=_pairs(p1, p2, valid[0], valid[1]),
                      extracted=_pairs(e1, e2, has1, has2), status=pa.array(status.astype(object), pa.string()))


# ---------------------------------------------------------------- FA

def _import_fa(cfg: Config, model: ReleasedModelCfg, path: Path, words: list[str], out: Path) -> dict:

    runs, k = cfg.trials.fa_runs, cfg.trials.fa_associates
    vocab = pa.array(words, pa.string())
    plan = checked_plan_file(cfg, "fa")
    try:
        seeds = pq.read_table(plan, columns=["seed"]).column("seed").to_numpy()
    except (pa.ArrowException, OSError) as e:
        raise PipelineError(f"{plan}: unreadable trial plan ({e}); rebuild it with "
                            f"`{keys.command(cfg, 'trials', force=True)}`") from None
    n_plan = len(seeds)
    if n_plan != len(words) * runs:
        raise PipelineError(f"{plan}: {n_plan} trials, not {len(words)} cues x {runs} runs; rebuild it with "
                            f"`{keys.command(cfg, 'trials', force=True)}`")
    pf = _open(path, FA_COLUMNS)
    tids, positions, assocs = [], [], []
    stats = dict.fromkeys(("rows", "null_associations", "beyond_k", "trials_without_associates"), 0)
    first = 0
    for batch in _batches(pf, path, FA_COLUMNS):
        run = _ints(batch, "run", path)
        pos = _ints(batch, "position", path)
        cue_text = _strings(batch, "input", path)
        cue = _index(cue_text, vocab)
        outside = (cue < 0) | (run < 0) | (run >= runs)
        if outside.any():
            i = int(np.argmax(outside))
            raise PipelineError(f"{path}: {int(outside.sum())} row(s) of a batch lie outside the FA plan of "
                                f"{cfg.source} ({len(words)} cues x trials.fa_runs = {runs} runs), e.g. row "
                                f"{first + i}: input '{cue_text[i]}', run {int(run[i])}; the file belongs to another "
                                f"vocabulary or more runs: use the [vocab] and [trials] of configs/paper.toml")
        assoc = _strings(batch, "association", path)
        has = pc.is_valid(assoc).to_numpy(zero_copy_only=False)
        stats["null_associations"] += int((~has).sum())
        tids.append((cue * runs + run)[has])
        positions.append(pos[has])
        assocs.append(assoc.filter(pa.array(has)))
        stats["rows"] += batch.num_rows
        first += batch.num_rows
    tid = np.concatenate(tids) if tids else np.zeros(0, np.int64)
    pos = np.concatenate(positions) if positions else np.zeros(0, np.int64)
    del tids, positions
    order = np.lexsort((pos, tid))
    del pos
    tid = tid[order]
    assoc = pa.concat_arrays(assocs).take(pa.array(order)) if assocs else pa.array([], pa.string())
    del assocs, order
    counts = np.bincount(tid, minlength=n_plan)
    rank = np.arange(tid.size) - np.repeat(_offsets(counts)[:-1], counts)
    keep = rank < k
    stats["beyond_k"] = int((~keep).sum())
    if not keep.all():
        tid, assoc = tid[keep], assoc.filter(pa.array(keep))
    del rank, keep
    counts = np.bincount(tid, minlength=n_plan)
    stats["trials_without_associates"] = int((counts == 0).sum())
    lower = pc.utf8_lower(assoc)
    cue_of = tid // runs
    said_cue = pc.equal(lower, pc.utf8_lower(vocab).take(pa.array(cue_of))).to_numpy(zero_copy_only=False)
    cue_rep = np.bincount(tid[said_cue], minlength=n_plan) > 0
    codes = pc.dictionary_encode(lower).indices.to_numpy().astype(np.int64)
    del lower, cue_of, said_cue
    by = np.lexsort((codes, tid))
    twice = (tid[by][1:] == tid[by][:-1]) & (codes[by][1:] == codes[by][:-1])
    dup = np.bincount(tid[by][1:][twice], minlength=n_plan) > 0
    del codes, by, twice
    status = np.select([counts == 0, counts < k, cue_rep, dup], ["unparseable", "wrong_count", "cue_repeat",
                                                                  "duplicate"], "ok")
    offsets = _offsets(counts)
    parts = _Parts(out)
    for start in range(0, n_plan, _PART_ROWS):
        stop = min(start + _PART_ROWS, n_plan)
        picks = pa.ListArray.from_arrays(pa.array(offsets[start:stop + 1] - offsets[start], pa.int32()),
                                         assoc.slice(offsets[start], offsets[stop] - offsets[start]))
        joined = pc.binary_join(picks, ", ")
        trial = np.arange(start, stop, dtype=np.int64)
        cue_idx = (trial // runs).astype(np.int32)
        parts.add(_log_table(stop - start, trial_id=pa.array(trial), cue_idx=pa.array(cue_idx),
                             cue=vocab.take(pa.array(cue_idx)), run=pa.array((trial % runs).astype(np.int16)),
                             seed=pa.array(seeds[start:stop]),
                             raw_output=pc.binary_join_element_wise("output: ", joined, ".", ""),
                             picks=picks, extracted=picks, status=pa.array(status[start:stop].astype(object),
                                                                           pa.string())))
    parts.flush()
    stats["imported"] = parts.written
    return stats

"""Human association norms as a reference geometry: import into counts -> PPMI -> cosine.

Psycholinguists compare model geometry with human free-association norms, above all the
Small World of Words (SWOW; De Deyne et al., 2019). The norms are not redistributable, so
nothing ships with the pipeline: each `[[norms]]` entry of the config points at the user's
own file, in one of three layouts (`norms[].format`, or ``auto`` to tell them by the header):

- ``swow``: SWOW's published CSV (e.g. ``SWOW-EN.R100.csv``), one row per participant and cue
  with columns ``cue`` and ``R1``, ``R2``, ``R3`` (other columns are ignored). Missing
  responses are ``NA`` (unquoted, as R writes them), empty, or SWOW's raw markers ``No more
  responses`` and ``Unknown word``; none of them counts. `norms[].responses` chooses the
  columns counted (all three by default, SWOW's R123; ``["R1"]`` for first responses only).
- ``strength``: SWOW's strength tables (``cue, response, R123, N, R123.Strength``, or ``R1`` in
  the first-response file): the ``R123`` (``R1`` with ``responses = ["R1"]``) column is the
  count; ``N`` and the strength (a proportion) are not read.
- ``counts``: a plain table with columns ``cue``, ``response``, ``count`` (one row per cue and
  response; repeated pairs add up; counts must be finite and non-negative).

Comma- or tab-separated, UTF-8, header in the first line (names matched case-insensitively).

Only cues of the experiment's vocabulary are kept (matched after lowercasing, stripping and
Unicode NFC normalization); responses stay an open vocabulary, cleaned by the same rules as
model responses under the default rules, in paper mode too, since norms are beyond the paper
(`aggregate`: lowercase, strip, drop empty, ``na``/``nan`` and strings without a letter or
digit, drop responses equal to the cue). The counts then go through the
same PPMI and cosine as behavioral matrices, written to `norms/<name>/` in the layout of
`matrices/<model>/<paradigm>/`. A vocabulary word without norms gets a NaN row and column
(masked in every comparison with this reference, never a zero row); `stats.json` and the
manifest report the coverage (how many vocabulary words have norms) and the missing words.

The reference is named ``human:<name>`` in `rsa.references`: RSA and NN@k of every hidden
layer against it, a regression feature set (`regress`), and the comparison of each model's
behavioral geometry with it (`rsa`, table `behavior_norms`).
"""

from __future__ import annotations

import csv
import json
import logging
import time
import unicodedata
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from . import keys, paths
from .config import Config, NormsCfg
from .errors import PipelineError
from .manifest import Manifest, fingerprint
from .rules import Rules

log = logging.getLogger(__name__)

_VERSION = 1
MISSING = ("no more responses", "unknown word")
"""SWOW's markers for a response not given (compared lowercased); NA and empty cells too."""
_BLOCK = 16 << 20


def import_norms(cfg: Config, norms: NormsCfg, words: list[str], force: bool = False) -> dict:
    """Import one `[[norms]]` file into `norms/<name>/` (manifest-aware: skipped when the file's
    content and the settings are what was imported last).

    Returns:
        The stats written to `stats.json` (coverage, what was dropped and why).

    Raises:
        PipelineError: the file is missing, unreadable, or lacks the columns of its layout.
    """
    from .counts import OUTPUT_FILES, write_outputs

    idx = cfg.norms.index(norms)
    path = Path(norms.path)
    if not path.is_file():
        raise PipelineError(f"norms[{idx}].path = {str(path)!r} in {cfg.source}: "
                            f"{'not a file' if path.exists() else 'file not found'}; point it at your copy of the "
                            f"norms (SWOW's CSV, e.g. SWOW-EN.R100.csv from smallworldofwords.org, or a "
                            f"cue,response,count table). Norms are not shipped with the pipeline")
    layout = detect(path, norms, idx, cfg.source)
    man = Manifest(cfg.run_dir)
    out = paths.norms_dir(cfg, norms.name)
    key = keys.norms(norms.name)
    step = man.step(key, {"vocab": fingerprint(words), "format": layout.format, "responses": layout.responses,
                          "version": _VERSION}, {"file": man.ids([path])[man.rel(path)]}, force)
    if step.done():
        log.info("norms %s: complete, skipping (%s)", norms.name, out)
        return json.loads((out / "stats.json").read_text())
    t0 = time.perf_counter()
    counts, cols, stats = count_norms(path, layout, words)
    if not stats["covered"]:
        cues = sorted(stats.get("cue_examples", []))
        raise PipelineError(
            f"{path}: none of the {len(words)} vocabulary words ({', '.join(words[:3])}, ...) is a cue with a counted "
            f"response in these norms ({stats['cues_in_file']} cues, e.g. {', '.join(cues[:5]) or 'none'}), so "
            f"human:{norms.name} would be a reference without a single row; check that norms[{idx}].path is the "
            f"norms of this vocabulary's language and that its '{layout.cue}' column holds the cue words, or remove "
            f"human:{norms.name} from rsa.references in {cfg.source}")
    step.start()
    stats.update({"name": norms.name, "file": str(path), "format": layout.format,
                  "response_columns": layout.responses or [layout.response, layout.count]})
    write_outputs(out, words, counts, cols, stats)
    log.info("norms %s: %d of %d vocabulary words have norms (%.1f%%), %d responses counted, %d distinct responses "
             "(%.1f s)",
             norms.name, stats["covered"], len(words), 100 * stats["coverage"], stats["picks"], stats["responses"],
             time.perf_counter() - t0)
    if stats["masked_rows"]:
        log.warning("norms %s: %d vocabulary word(s) have no norms and are masked in every comparison with "
                    "human:%s: %s", norms.name, stats["masked_rows"], norms.name,
                    ", ".join(stats["masked_row_words"][:20]) + (" ..." if stats["masked_rows"] > 20 else ""))
    summary = {k: v for k, v in stats.items() if k not in ("row_valid", "empty_row_words", "masked_row_words")}
    step.complete([out / f for f in OUTPUT_FILES], {**summary, "missing_words": stats["masked_row_words"][:50]})
    return stats


class Layout:
    """A norms file's resolved layout: format, delimiter and the actual column names."""

    def __init__(self, format: str, delimiter: str, cue: str, responses: list[str], response: str | None = None,
                 count: str | None = None):
        self.format, self.delimiter, self.cue = format, delimiter, cue
        self.responses, self.response, self.count = responses, response, count


def detect(path: Path, norms: NormsCfg, idx: int = 0, source: str = "<memory>") -> Layout:
    """Read the header of a norms file and resolve its layout.

    Raises:
        PipelineError: unreadable, no header, or the columns of the layout are missing.
    """
    try:
        with open(path, encoding="utf-8-sig", newline="") as f:
            first = f.readline()
    except UnicodeDecodeError:
        raise PipelineError(f"{path}: not UTF-8 text; save the norms file as UTF-8 CSV") from None
    except OSError as e:
        raise PipelineError(f"{path}: cannot read the norms file ({e.strerror or e})") from None
    delimiter = "\t" if first.count("\t") > first.count(",") else ","
    header = next(csv.reader([first], delimiter=delimiter), [])
    by_lower = {}
    for name in header:
        by_lower.setdefault(name.strip().lower(), name)
    fmt = norms.format
    strength_like = "response" in by_lower and "count" not in by_lower and bool({"r123", "r1"} & set(by_lower))
    if fmt == "auto":
        fmt = ("strength" if strength_like else "swow" if "r1" in by_lower
               else "counts" if {"response", "count"} <= set(by_lower) else None)
        if fmt is None:
            raise PipelineError(f"{path}: the header ({', '.join(header[:12]) or 'empty'}) is neither SWOW's "
                                f"(cue, R1, R2, R3), SWOW's strength table (cue, response, R123 or R1) nor a counts "
                                f"table (cue, response, count); fix the file or set norms[{idx}].format in {source}")
    if fmt == "strength":
        return _strength_layout(path, norms, idx, source, delimiter, header, by_lower)
    need = ["cue", *(r.lower() for r in norms.responses)] if fmt == "swow" else ["cue", "response", "count"]
    missing = [c for c in need if c not in by_lower]
    if missing:
        hint = f' (a SWOW strength table: set norms[{idx}].format = "strength")' if strength_like else ""
        raise PipelineError(f"{path}: the {fmt} layout needs the column(s) {', '.join(missing)}, but the header has "
                            f"{', '.join(header[:12]) or 'nothing'}; fix the file, or norms[{idx}].format / "
                            f"norms[{idx}].responses in {source}{hint}")
    if fmt == "swow":
        return Layout("swow", delimiter, by_lower["cue"], [by_lower[r.lower()] for r in norms.responses])
    return Layout("counts", delimiter, by_lower["cue"], [], by_lower["response"], by_lower["count"])


def _strength_layout(path: Path, norms: NormsCfg, idx: int, source: str, delimiter: str, header: list[str],
                     by_lower: dict) -> Layout:
    """SWOW's strength table (``cue, response, R123, N, R123.Strength``; ``R1`` in the
    first-response file): the ``R123`` (or ``R1``) column is the number of participants who gave
    the response, the count; ``N`` and the strength (count / N) are not read."""
    column = "R123" if sorted(norms.responses) == ["R1", "R2", "R3"] else "R1" if norms.responses == ["R1"] else None
    if column is None:
        raise PipelineError(f"norms[{idx}].responses = {norms.responses} in {source}: SWOW's strength tables hold "
                            f"R123 (all responses) or R1 (first responses) only; set responses to [\"R1\", \"R2\", "
                            f"\"R3\"] or [\"R1\"]")
    missing = [c for c in ("cue", "response", column.lower()) if c not in by_lower]
    if missing:
        fix = (f'set norms[{idx}].responses = ["R1"] (this is the first-response table)' if column == "R123"
               and "r1" in by_lower else f"use the R{column[1:]} strength file, or set norms[{idx}].responses")
        raise PipelineError(f"{path}: the strength layout of responses {', '.join(norms.responses)} counts the column "
                            f"{column}, but the header has {', '.join(header[:12]) or 'nothing'}; {fix} in {source}")
    return Layout("strength", delimiter, by_lower["cue"], [], by_lower["response"], by_lower[column.lower()])


def count_norms(path: Path, layout: Layout, words: list[str]):
    """Stream a norms file into the vocabulary x response count matrix (`counts.Counter`).

    Returns:
        (counts, cols, stats) as `aggregate.count_matrix`, stats extended with `rows`,
        `rows_outside_vocabulary`, `missing_responses`, `cues_in_file`, `covered` and
        `coverage` (share of the vocabulary with at least one counted response).
    """
    from .counts import Counter

    weighted = layout.count is not None
    counter = Counter(words, "norms", Rules(), path, weighted=weighted)
    value_set, index_of = _cue_keys(words, path)
    vocab = pa.array(words, pa.string())
    reader = _open_csv(path, layout, weighted)
    st = {"rows": 0, "rows_outside_vocabulary": 0, "missing_responses": 0}
    cues_seen = set()
    while True:
        try:
            batch = reader.read_next_batch()
        except StopIteration:
            break
        except (pa.ArrowInvalid, OSError) as e:
            raise PipelineError(f"{path}: malformed norms CSV after row {st['rows']} ({str(e).splitlines()[0]}); "
                                f"fix the file") from None
        st["rows"] += batch.num_rows
        cue = batch.column(layout.cue)
        cues_seen.update(v for v in pc.unique(cue).to_pylist() if v is not None)
        pos = pc.index_in(_clean_key(cue), value_set=value_set)
        inside = pc.is_valid(pos)
        st["rows_outside_vocabulary"] += batch.num_rows - int(pc.sum(inside).as_py() or 0)
        batch = batch.filter(inside)
        if not batch.num_rows:
            continue
        cue_idx = index_of[np.asarray(pc.filter(pos, inside).to_numpy(zero_copy_only=False), dtype=np.int64)]
        cues = pa.RecordBatch.from_pydict({"cue_idx": pa.array(cue_idx, pa.int32()),
                                           "cue": vocab.take(pa.array(cue_idx))})
        if weighted:
            w = np.asarray(pc.fill_null(batch.column(layout.count), np.nan).to_numpy(zero_copy_only=False))
            bad = ~np.isfinite(w) | (w < 0)
            if bad.any():
                raise PipelineError(f"{path}: column '{layout.count}' holds {int(bad.sum())} count(s) that are "
                                    f"missing, negative or not a number among the rows of the vocabulary's cues; "
                                    f"counts must be numbers >= 0")
            resp = batch.column(layout.response)
            given = np.asarray(pc.is_valid(resp).to_numpy(zero_copy_only=False), dtype=bool)
            st["missing_responses"] += int((~given).sum())
            counter.add(cues, picks=_as_lists(resp), weights=pa.array(w[given]))
            continue
        for name in layout.responses:
            resp = batch.column(name)
            given = pc.and_(pc.is_valid(resp), pc.invert(pc.fill_null(
                pc.is_in(pc.utf8_lower(pc.utf8_trim_whitespace(resp)), value_set=pa.array(MISSING)), False)))
            st["missing_responses"] += batch.num_rows - int(pc.sum(given).as_py() or 0)
            counter.add(cues, picks=_as_lists(pc.if_else(given, resp, pa.scalar(None, pa.string()))))
    counts, cols, stats = counter.result()
    valid = np.asarray(stats["row_valid"], dtype=bool)
    stats.update(st)
    stats.update({"cues_in_file": len(cues_seen), "covered": int(valid.sum()), "cue_examples": sorted(cues_seen)[:5],
                  "coverage": round(float(valid.mean()), 4) if len(words) else 0.0})
    stats["trials"] = stats["rows"]
    return counts, cols, stats


def _cue_keys(words: list[str], path: Path) -> tuple[pa.Array, np.ndarray]:
    """The vocabulary's cue keys (lowercased, stripped) and the row of each; where two words
    share a key, the first one's."""
    first: dict[str, int] = {}
    for i, w in enumerate(words):
        first.setdefault(_key(w), i)
    if len(first) < len(words):
        log.warning("norms %s: %d vocabulary words coincide with another after lowercasing; their norms go to the "
                    "first of them", path.name, len(words) - len(first))
    return pa.array(list(first), pa.string()), np.array(list(first.values()), dtype=np.int32)


def _open_csv(path: Path, layout: Layout, weighted: bool):
    """A streaming pyarrow CSV reader of the layout's columns (responses as text, counts as numbers)."""
    from pyarrow import csv as pacsv

    text_cols = [layout.cue, *layout.responses] + ([layout.response] if weighted else [])
    types = {c: pa.string() for c in text_cols}
    if weighted:
        types[layout.count] = pa.float64()
    try:
        return pacsv.open_csv(
            str(path), read_options=pacsv.ReadOptions(block_size=_BLOCK),
            parse_options=pacsv.ParseOptions(delimiter=layout.delimiter, newlines_in_values=True),
            convert_options=pacsv.ConvertOptions(column_types=types, include_columns=list(types),
                                                 null_values=["NA", ""], strings_can_be_null=True,
                                                 quoted_strings_can_be_null=False))
    except (pa.ArrowInvalid, OSError) as e:
        raise PipelineError(f"{path}: cannot read the norms file as CSV ({str(e).splitlines()[0]})") from None


def _key(word: str) -> str:
    return unicodedata.normalize("NFC", word).strip().lower()


def _clean_key(arr: pa.Array) -> pa.Array:
    return pc.utf8_lower(pc.utf8_trim_whitespace(pc.utf8_normalize(pc.fill_null(arr, ""), "NFC")))


def _as_lists(values: pa.Array) -> pa.Array:
    """One single-response list per row; a null value becomes an empty list (nothing counted)."""
    valid = np.asarray(pc.is_valid(values).to_numpy(zero_copy_only=False), dtype=bool)
    offsets = np.concatenate([[0], np.cumsum(valid)]).astype(np.int32)
    return pa.ListArray.from_arrays(pa.array(offsets), pc.drop_null(values))


def describe(cfg: Config, ref: str) -> tuple[str, str]:
    """(what the file of reference ``human:<name>`` holds, the command that rebuilds it)."""
    name = ref.split(":", 1)[1]
    return (f"the human association norms '{name}' (PPMI-cosine)",
            keys.command(cfg, "aggregate"))

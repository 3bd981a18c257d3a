"""The trial log store: one directory of immutable Parquet parts per model and paradigm.

`data/<exp>/behavior/<model>/<paradigm>/part-<I>of<N>-<seq>.parquet` holds one row per
attempt (main, repair, retries) of every trial in one finished chunk. A part is written to a
hidden temp name in the same directory, fsynced, then hard-linked to its final name (which
fails instead of overwriting when the name exists) and the directory is fsynced. A crash
therefore loses at most the chunk in flight, and readers never see half a part.

Resuming is a set difference: the plan's trial_ids minus the trial_ids that have a final
row in some part. Parts are never deleted or rewritten by the pipeline; a part that cannot
be read stops every reader with a message naming it, because silently skipping it would
re-run (and double-count) its trials and silently deleting it would lose data.

Scored forced choice (`fc_scored`) logs one row per trial in its own layout
(`SCORED_SCHEMA`: the candidates and the model's log-probability of each as the first pick,
instead of a generated answer), so the FC and FA layout stays as it was; every function here
reads the layout of a directory from its name, the paradigm (`paths.behavior_dir`).

Concurrency: one `WriterLock` per directory (and per shard with ``--shard I/N``) stops two
processes from running the same trials; the part name carries the shard, and the hard-link
publish step makes numbering collision-free even without the lock (e.g. Ray workers).
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import re
import socket
import time
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from .errors import PipelineError
from .paradigms import find as find_paradigm
from .store import fsync_dir

log = logging.getLogger(__name__)

SCHEMA = pa.schema([
    ("trial_id", pa.int64()),
    ("cue_idx", pa.int32()),
    ("cue", pa.string()),
    ("candidates", pa.list_(pa.string())),
    ("run", pa.int16()),
    ("attempt", pa.int16()),
    ("attempt_kind", pa.string()),
    ("raw_output", pa.string()),
    ("picks", pa.list_(pa.string())),
    ("extracted", pa.list_(pa.string())),
    ("status", pa.string()),
    ("final", pa.bool_()),
    ("seed", pa.int64()),
    ("prompt_sha", pa.string()),
    ("n_prompt_tokens", pa.int32()),
    ("n_output_tokens", pa.int32()),
    ("latency_s", pa.float32()),
])
SCORED_SCHEMA = pa.schema([
    ("trial_id", pa.int64()),
    ("cue_idx", pa.int32()),
    ("cue", pa.string()),
    ("candidates", pa.list_(pa.string())),
    ("logprobs", pa.list_(pa.float32())),
    ("probs", pa.list_(pa.float32())),
    ("n_tokens", pa.list_(pa.int16())),
    ("status", pa.string()),
    ("final", pa.bool_()),
    ("prompt_sha", pa.string()),
    ("n_prompt_tokens", pa.int32()),
    ("n_output_tokens", pa.int32()),
    ("latency_s", pa.float32()),
])
"""`fc_scored` rows: per candidate (plan order) the summed log-probability of its answer tokens
(`logprobs`), the distribution over the candidates as the first pick (`probs`, the logprobs
normalized over the trial) and the tokens scored (`n_tokens`); `n_output_tokens` is their
total. `status` is ``ok``, or ``not_finite`` when a log-probability is not finite (no
distribution then)."""
PART_GLOB = "part-*.parquet"
_PART_RE = re.compile(r"^part-(\d+)of(\d+)-(\d+)\.parquet$")
_TMP_PREFIX = ".tmp-"


def _shard_tag(shard: tuple[int, int]) -> str:
    i, n = shard
    if not 0 <= i < n:
        raise ValueError(f"shard {i}/{n}: need 0 <= I < N")
    return f"{i:03d}of{n:03d}"


def shard_mask(trial_ids: np.ndarray, shard: tuple[int, int]) -> np.ndarray:
    """Boolean mask of the trial_ids that belong to shard I of N (``trial_id % N == I``).

    Modulo rather than contiguous ranges so that every shard gets cues from the whole
    vocabulary and finishes at about the same time.
    """
    i, n = shard
    return (np.asarray(trial_ids, dtype=np.int64) % n) == i


def _move_aside_hint(path: Path) -> str:
    return (f"move it aside (mv '{path}' '{path}.bad') and run the same command again: its trials "
            f"will be run again. The pipeline never deletes trial logs itself")


def _bad_part(path: Path, why: str) -> PipelineError:
    return PipelineError(f"trial log part {path} is unusable ({why}); {_move_aside_hint(path)}")


def schema_for(directory: str | Path) -> pa.Schema:
    """The log layout of a behavior directory, named by its paradigm (`Paradigm.log_schema`:
    `SCORED_SCHEMA` for `fc_scored`); `SCHEMA` for any other directory."""
    par = find_paradigm(Path(directory).name)
    return SCHEMA if par is None else par.log_schema()


def _check_schema(path: Path, schema: pa.Schema) -> None:
    for f in schema_for(path.parent):
        idx = schema.get_field_index(f.name)
        if idx < 0:
            raise _bad_part(path, f"column '{f.name}' missing: not a trial log of this pipeline version")
        if not schema.field(idx).type.equals(f.type):
            raise _bad_part(path, f"column '{f.name}' has type {schema.field(idx).type}, expected {f.type}")


def list_parts(directory: str | Path) -> list[Path]:
    """All finished parts of one model/paradigm, validated, in name order.

    Stray temp files of killed writers are ignored (writers clean their own shard's on start).

    Args:
        directory: the `paths.behavior_dir(...)` directory; missing means no parts yet.

    Returns:
        Paths of the parts.

    Raises:
        PipelineError: a part is truncated, unreadable or not a trial log; the message names
            the file and says to move it aside.
    """
    directory = Path(directory)
    if not directory.is_dir():
        return []
    parts = sorted(p for p in directory.glob(PART_GLOB) if p.is_file())
    for p in parts:
        try:
            schema = pq.read_schema(p)
        except (pa.ArrowException, OSError) as e:
            raise _bad_part(p, f"not readable as Parquet: {e}") from None
        _check_schema(p, schema)
    return parts


def _read(path: Path, columns: list[str]) -> pa.Table:
    try:
        return pq.read_table(path, columns=columns)
    except (pa.ArrowException, OSError) as e:
        raise _bad_part(path, f"reading failed: {e}") from None


def read_part(path: str | Path, columns: list[str]) -> pa.Table:
    """Some columns of one part (every attempt); a part that cannot be read is named."""
    return _read(Path(path), columns)


def finished_ids(directory: str | Path) -> np.ndarray:
    """Sorted unique trial_ids that have a final row in some part (i.e. are done)."""
    ids = []
    for p in list_parts(directory):
        t = _read(p, ["trial_id", "final"])
        final = t.column("final").to_numpy(zero_copy_only=False)
        ids.append(t.column("trial_id").to_numpy()[final.astype(bool)])
    if not ids:
        return np.empty(0, dtype=np.int64)
    return np.unique(np.concatenate(ids))


def iter_final(directory: str | Path, columns: Iterable[str] | None = None,
               batch_size: int = 65536) -> Iterator[pa.RecordBatch]:
    """Stream the final row of every trial (what aggregation counts).

    Memory stays bounded by one batch plus a bitmap of seen trial_ids. Should two parts hold
    the same trial (two runs sharded with different N at once), the first part in name order
    wins and a warning says how many rows were dropped.

    Args:
        directory: the behavior directory of one model/paradigm.
        columns: columns to return (default: all).
        batch_size: rows per Parquet read batch.

    Yields:
        Record batches with only rows where ``final`` is true.
    """
    names = schema_for(directory).names
    out_cols = list(columns) if columns is not None else names
    unknown = [c for c in out_cols if c not in names]
    if unknown:
        raise ValueError(f"unknown trial log columns {unknown}; columns: {names}")
    read_cols = list(dict.fromkeys([*out_cols, "trial_id", "final"]))
    seen = np.zeros(0, dtype=bool)
    dropped = 0
    for p in list_parts(directory):
        try:
            batches = pq.ParquetFile(p).iter_batches(batch_size=batch_size, columns=read_cols)
            for b in batches:
                final = b.column("final").to_numpy(zero_copy_only=False).astype(bool)
                ids = b.column("trial_id").to_numpy()
                if final.any() and ids[final].max() >= len(seen):
                    seen = np.concatenate([seen, np.zeros(max(int(ids[final].max()) + 1 - len(seen),
                                                              len(seen)), dtype=bool)])
                keep = final.copy()
                keep[final] = ~seen[ids[final]]
                dropped += int(final.sum() - keep.sum())
                seen[ids[keep]] = True
                if keep.any():
                    yield b.filter(pa.array(keep)).select(out_cols)
        except (pa.ArrowException, OSError) as e:
            raise _bad_part(p, f"reading failed: {e}") from None
    if dropped:
        log.warning("%s: %d duplicate final rows ignored (a trial ran in two parts; were two runs "
                    "with different --shard N writing at once?)", directory, dropped)


def conform(table: pa.Table, schema: pa.Schema = SCHEMA) -> pa.Table:
    """Cast a table of log rows to `schema` (column order and types); missing columns fail."""
    missing = [n for n in schema.names if n not in table.column_names]
    if missing:
        raise ValueError(f"trial log rows lack columns {missing}")
    return table.select(schema.names).cast(schema)


def write_part(directory: str | Path, table: pa.Table, shard: tuple[int, int] = (0, 1)) -> Path:
    """Publish one chunk's log rows as a new part, atomically and without overwriting.

    Args:
        directory: behavior directory (created if missing).
        table: log rows (cast to the directory's layout, `schema_for`).
        shard: (I, N) of the writer; goes into the part name.

    Returns:
        The path of the new part.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    table = conform(table, schema_for(directory))
    tag = _shard_tag(shard)
    tmp = directory / f"{_TMP_PREFIX}part-{tag}-{os.getpid()}-{time.time_ns()}.parquet"
    pq.write_table(table, tmp, compression="zstd")
    fd = os.open(tmp, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        seq = 1 + max((int(m.group(3)) for p in directory.glob(f"part-{tag}-*.parquet")
                       if (m := _PART_RE.match(p.name))), default=-1)
        while True:
            final = directory / f"part-{tag}-{seq:06d}.parquet"
            try:
                os.link(tmp, final)
                break
            except FileExistsError:
                seq += 1
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(directory)
    return final


class WriterLock:
    """Exclusive right to write one model/paradigm directory, or one shard of it.

    An unsharded run takes ``.writer.lock`` exclusively. A run with ``--shard I/N`` takes it
    shared plus ``.shard-IofN.lock`` exclusively, so the N shards of one run can write at
    once while an unsharded run, a second copy of the same shard, or a shard of a split with
    another N is refused. Locks are `flock`s: the kernel drops them when the holder dies, so
    a killed run never leaves a stale lock behind.

    Use as a context manager; on entry it also removes this shard's temp files left by a
    killed writer (safe: nobody else can be writing this shard).
    """

    def __init__(self, directory: str | Path, shard: tuple[int, int] = (0, 1)):
        self.dir = Path(directory)
        self.shard = shard
        self._files: list = []

    def _holders(self) -> str:
        found = []
        for p in sorted(self.dir.glob(".*.lock")):
            with contextlib.suppress(OSError), open(p, "a+") as f:
                try:
                    fcntl.flock(f, fcntl.LOCK_SH | fcntl.LOCK_NB)
                    fcntl.flock(f, fcntl.LOCK_UN)
                    continue
                except BlockingIOError:
                    pass
                f.seek(0)
                text = f.read().strip()
                if text:
                    found.append(text)
        return "; ".join(found) or "holder unknown"

    def _refuse(self, lock: Path, why: str) -> PipelineError:
        return PipelineError(
            f"{lock} is held by another behave run ({self._holders()}): {why}. Wait for that "
            f"run to finish or stop it (kill PID); a lock dies with its process, so if no such "
            f"process exists, run the same command again")

    def _take(self, path: Path, mode: int, why: str):
        f = open(path, "a+")
        try:
            fcntl.flock(f, mode | fcntl.LOCK_NB)
        except BlockingIOError:
            f.close()
            raise self._refuse(path, why) from None
        self._files.append(f)
        return f

    def _stamp(self, f) -> None:
        i, n = self.shard
        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()} on {socket.gethostname()}, shard {i}/{n}, since "
                f"{time.strftime('%Y-%m-%dT%H:%M:%S')}\n")
        f.flush()

    def __enter__(self) -> "WriterLock":
        i, n = self.shard
        tag = _shard_tag(self.shard)
        self.dir.mkdir(parents=True, exist_ok=True)
        writer = self.dir / ".writer.lock"
        try:
            if n == 1:
                self._stamp(self._take(writer, fcntl.LOCK_EX, "only one unsharded run may write "
                                                              "a model/paradigm at a time"))
            else:
                self._take(writer, fcntl.LOCK_SH, f"an unsharded run is writing; --shard {i}/{n} "
                                                  f"cannot run beside it")
                self._stamp(self._take(self.dir / f".shard-{tag}.lock", fcntl.LOCK_EX,
                                       f"shard {i}/{n} is already running"))
                self._refuse_other_splits(n)
        except BaseException:
            self.release()
            raise
        pattern = f"{_TMP_PREFIX}part-*" if n == 1 else f"{_TMP_PREFIX}part-{tag}-*"
        for tmp in self.dir.glob(pattern):
            log.info("removing %s left by a killed writer", tmp)
            tmp.unlink(missing_ok=True)
        return self

    def _refuse_other_splits(self, n: int) -> None:
        for p in self.dir.glob(".shard-*.lock"):
            m = re.match(r"^\.shard-(\d+)of(\d+)\.lock$", p.name)
            if not m or int(m.group(2)) == n:
                continue
            with open(p, "a+") as f:
                try:
                    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    raise self._refuse(p, f"a run split into {int(m.group(2))} shards is writing; "
                                          f"all shards of one run must use the same N") from None
                fcntl.flock(f, fcntl.LOCK_UN)

    def release(self) -> None:
        for f in reversed(self._files):
            with contextlib.suppress(OSError):
                fcntl.flock(f, fcntl.LOCK_UN)
            f.close()
        self._files = []

    def __exit__(self, *exc) -> None:
        self.release()

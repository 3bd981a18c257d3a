"""What the Ray drivers (`distributed.behave`, `.hidden`, `.sentences`) share: the session,
the plan of workers the cluster fits, and what travels to a worker (the driver's environment
and a config whose relative paths are made absolute)."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from ..config import Config
from ..errors import PipelineError

log = logging.getLogger(__name__)

MAX_RESTARTS = 3
_ENV_PREFIXES = ("PIPELINE_", "HF_", "TRANSFORMERS_", "TOKENIZERS_", "VLLM_", "CUDA_LAUNCH_BLOCKING")


@contextlib.contextmanager
def ray_session(address: str | None):
    """Connect to the Ray cluster at `address` (start a local one when None) for one stage.

    An already initialised Ray (a test fixture, a notebook) is reused and left running.
    Usage statistics and the dashboard stay off: the pipeline never talks to the network.
    """
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    try:
        import ray
    except ImportError as e:
        raise PipelineError(f"--engine ray needs Ray ({e}); install it with `pip install -e '.[ray]'` "
                            f"or run without --engine ray") from None
    if ray.is_initialized():
        yield ray
        return
    kw = {"include_dashboard": False} if address is None else {}
    try:
        ray.init(address=address, logging_level=logging.WARNING, **kw)
    except ConnectionError as e:
        raise PipelineError(f"cannot reach the Ray cluster at --address {address} ({e}); start it with "
                            f"`ray start --head` on the head node, check the address it printed, or "
                            f"leave --address out to run Ray on this machine") from None
    try:
        yield ray
    finally:
        ray.shutdown()


def worker_env() -> dict[str, str]:
    """Driver variables the workers need (offline flags, caches, fault drill, fake backend).

    They travel as a constructor argument rather than a Ray ``runtime_env``: an env_vars
    runtime env makes Ray start a fresh worker pool through its runtime-env agent (about
    10 s per actor on a small machine), and constructor arguments are replayed on restart.
    """
    return {k: v for k, v in os.environ.items() if k.startswith(_ENV_PREFIXES)}


def _local_path(p: str | None) -> str | None:
    if p is None or ":" in p or Path(p).is_absolute() or not Path(p).exists():
        return p
    return str(Path(p).resolve())


def worker_config(cfg: Config) -> Config:
    """A copy of `cfg` for workers, with the driver's relative paths made absolute.

    Workers start in whatever directory the Ray node was started from, so model folders,
    the sentence file and the data directory are resolved against the driver's working
    directory (a shared filesystem mounted at the same place on every node keeps them
    valid). Hub ids and ``package:`` specs stay as they are. Fingerprints are always
    computed on the driver from the original config, so they do not change.
    """
    models = [dataclasses.replace(m, path=_local_path(m.path)) for m in cfg.models]
    hidden = dataclasses.replace(cfg.hidden, sentences=_local_path(cfg.hidden.sentences))
    experiment = dataclasses.replace(cfg.experiment, data_dir=str(Path(cfg.experiment.data_dir).resolve()))
    return dataclasses.replace(cfg, models=models, hidden=hidden, experiment=experiment)


@dataclass
class Resources:
    """Actors (or tasks at once) and what each reserves."""

    n: int
    num_cpus: float
    num_gpus: float


def plan_workers(cluster: dict, gpus_per_worker: int, workers: int | None) -> Resources:
    """How many actors to start and what each reserves.

    On a cluster with GPUs every actor takes `gpus_per_worker` GPUs (the model's tensor
    parallel size for vLLM, 1 for hf) and one CPU, and there are as many actors as the GPUs
    allow. Without GPUs the CPUs are shared out evenly (one per actor by default), and the
    backend's thread count follows.

    Args:
        cluster: `ray.cluster_resources()`.
        gpus_per_worker: GPUs one engine needs when GPUs exist (0: never use GPUs).
        workers: requested number of actors (``--workers``), None for as many as fit.

    Returns:
        The actor count and the per-actor reservation.

    Raises:
        PipelineError: the request cannot fit the cluster.
    """
    if workers is not None and workers < 1:
        raise PipelineError(f"--workers {workers}: give at least 1, or leave it out to use the whole cluster")
    gpus = int(cluster.get("GPU", 0))
    cpus = int(cluster.get("CPU", 0))
    if gpus and gpus_per_worker:
        fit = gpus // gpus_per_worker
        if fit < 1:
            raise PipelineError(f"one engine needs {gpus_per_worker} GPUs (models[].tensor_parallel_size) "
                                f"but the Ray cluster has {gpus}; lower tensor_parallel_size or add GPUs")
        n = min(workers or fit, fit)
        if workers and workers > fit:
            log.warning("--workers %d: the cluster's %d GPUs fit only %d engines of %d GPU(s); using %d",
                        workers, gpus, fit, gpus_per_worker, fit)
        return Resources(n, 1, gpus_per_worker)
    if cpus < 1:
        raise PipelineError("the Ray cluster reports no CPUs; check `ray status`")
    n = min(workers or cpus, cpus)
    return Resources(n, max(1, cpus // n), 0)


def set_threads(n: int) -> None:
    """Give torch the CPUs Ray reserved for this worker (if the engine uses torch at all)."""
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(max(1, n))

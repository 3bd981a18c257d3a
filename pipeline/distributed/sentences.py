"""`sentences --engine ray`: one Ray task per corpus unit.

One Ray task per corpus unit (a C4 shard, a file), as many at once as the
cluster has CPUs (or ``--workers``): each runs `sentences.scan_unit`, which checkpoints into
``sentences/parts/`` of the run directory (so storage every node sees, and corpus
files at the same path on every node); the driver hands out units in corpus order and
combines finished ones exactly as a local run does (`sentences.scan`), so the file is the same.
"""

from __future__ import annotations

import contextlib
import logging
import os

from ..config import Config
from ..errors import PipelineError
from ..options import Options
from ..sentences import build, scan_unit
from .cluster import MAX_RESTARTS, plan_workers, ray_session, worker_env

log = logging.getLogger(__name__)


def _sentences_task(spec, unit, part: str, budget, closed, env: dict[str, str]) -> dict:
    os.environ.update(env)

    return scan_unit(spec, unit, part, budget, closed)


def run(cfg: Config, opts: Options) -> None:
    """`sentences --engine ray`: one Ray task per corpus unit (module docstring).

    Ray starts only when there is something to scan; a task whose worker died is retried
    (up to `MAX_RESTARTS` times) and continues from its unit's last checkpoint.
    """
    stack = contextlib.ExitStack()

    def factory(workers: int | None):
        ray = stack.enter_context(ray_session(opts.address))
        res = plan_workers(ray.cluster_resources(), 0, workers)
        task = ray.remote(_sentences_task).options(num_cpus=1, max_retries=MAX_RESTARTS, retry_exceptions=False)
        env = worker_env()
        log.info("sentences: corpus units on Ray, %d at a time", res.n)

        def submit(spec, unit, part, budget, closed):
            return task.remote(spec, unit, part, budget, sorted(closed), env).future()

        return submit, stack.close, res.n

    try:
        build(cfg, opts, submit_factory=factory)
    except Exception as e:
        cause = getattr(e, "cause", None)
        if isinstance(cause, PipelineError):
            raise PipelineError(str(cause)) from None
        raise
    finally:
        stack.close()

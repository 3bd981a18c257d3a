"""The behave driver that keeps the engine fed: preparation and parsing overlap generation.

A lock-step driver (`attempts.run_chunk`) leaves the engine idle while it renders prompts,
parses answers and writes Parquet, and runs repair and retry passes as separate small
calls. Here one thread does nothing but call `backend.generate`, with the next call
already queued behind the running one, while the caller's thread prepares the call after
that, records answers and writes parts. Each call takes up to `call_size` requests: the
next attempts (repairs, retries) of the chunks already open first, oldest chunk first,
then the main requests of new chunks, so follow-ups join full batches.

What does not change (the logs are identical to a lock-step run's apart from latency, on
an engine whose kernels do not round by batch shape: README "Resuming"):
every trial's attempts depend only on its own answers (`attempts.ChunkRun`), which holds
for backends whose answers do not depend on their batch mates (`Backend.batch_invariant`:
per-request seeds, as vLLM honours them); rows of a chunk are ordered as in lock-step
passes; a chunk becomes one part when all its trials are final, and parts are published in
chunk order. A crash loses at most the chunks open at that moment (at most `lookahead`),
which the next run computes as missing, as before.
"""

from __future__ import annotations

import queue
import threading
from collections import deque
from collections.abc import Callable, Iterator

import pyarrow as pa

from .attempts import Attempt, ChunkRun, Protocol, generate
from .backends import Backend

LOOKAHEAD = 8
_POLL_S = 0.5


class _Engine(threading.Thread):
    """Runs `generate` calls one after another; results (or the error) go to `out`."""

    def __init__(self, backend: Backend):
        super().__init__(name="behave-engine", daemon=True)
        self.backend = backend
        self.inbox: queue.Queue = queue.Queue()
        self.out: queue.Queue = queue.Queue()

    def run(self) -> None:
        while True:
            items = self.inbox.get()
            if items is None:
                return
            try:
                results, latency = generate(self.backend, [it.request for it in items])
            except BaseException as e:  # handed to the driver thread, which raises it
                self.out.put((items, e, 0.0))
                return
            self.out.put((items, results, latency))


def run_pipelined(backend: Backend, proto: Protocol, chunks: Iterator[pa.Table],
                  publish: Callable[[pa.Table], None], call_size: int, lookahead: int = LOOKAHEAD) -> None:
    """Run every chunk of `chunks` through `backend`, calling `publish(rows)` once per chunk,
    in chunk order, as soon as the chunk and every chunk before it are final.

    Args:
        backend: a started, batch-invariant backend.
        proto: the paradigm's `attempts.Protocol`.
        chunks: plan tables, one per chunk (as the lock-step driver would cut them).
        publish: writes one finished chunk's log rows (a part).
        call_size: requests per `generate` call (`behave.chunk_size`).
        lookahead: chunks open at once; bounds memory and what a crash can lose.
    """
    engine = _Engine(backend)
    engine.start()
    open_runs: deque[ChunkRun] = deque()
    source = iter(chunks)
    exhausted = False
    in_flight = 0

    def next_call() -> list[Attempt]:
        nonlocal exhausted
        items: list[Attempt] = []
        for run in open_runs:
            if len(items) >= call_size:
                return items
            items += run.take(call_size - len(items))
        while len(items) < call_size and not exhausted and len(open_runs) < lookahead:
            table = next(source, None)
            if table is None:
                exhausted = True
                break
            run = ChunkRun(proto, table.to_pylist())
            open_runs.append(run)
            items += run.take(call_size - len(items))
        return items

    try:
        while True:
            while in_flight < 2:
                items = next_call()
                if not items:
                    break
                engine.inbox.put(items)
                in_flight += 1
            if in_flight == 0:
                break
            items, results, latency = _receive(engine)
            in_flight -= 1
            if isinstance(results, BaseException):
                raise results
            for it, res in zip(items, results):
                it.run.record(it, res, latency)
            while open_runs and open_runs[0].done:
                publish(open_runs.popleft().table())
    finally:
        engine.inbox.put(None)
        engine.join(timeout=60)


def _receive(engine: _Engine):
    """The next finished call; polls so that Ctrl-C reaches the driver thread."""
    while True:
        try:
            return engine.out.get(timeout=_POLL_S)
        except queue.Empty:
            if not engine.is_alive() and engine.out.empty():
                raise RuntimeError("the behave engine thread stopped without an answer") from None

"""One trial's attempts: prompts, requests, seeds and parsing, and a chunk's worth of them.

FC (METHOD.md §2): a greedy main pass; non-compliant answers get one greedy repair prompt
(`behave.repair`) and then up to `behave.retries` sampled retries (`retry_temperature`,
`retry_top_p`, per-model overrides), each quoting the latest bad answer. Every attempt is a
log row; the last one of a trial has ``final = true`` and keeps its status even when still
invalid. Invalid picks are never replaced. FA (METHOD.md §3): one sampled request per trial.

Seeds. Each sampled request carries its own seed, derived by hashing, so it is unique per
(trial, attempt) and independent of chunking, sharding and resumption:
- FC retry: ``derive_seed(trials.fc_seed, trial_id, attempt)``;
- FA: ``derive_seed(plan seed of the run (fa_seed + run), cue_idx)``.
The authors seeded the global torch generator once per FA run (and once per retry batch),
so their samples depend on batch composition; no per-request scheme can replay them
exactly. The hf backend seeds each micro-batch with its first request's seed (see
`backends.hf`).

Structured outputs (`behave.structured_fc` / `structured_fa`, for small models that do not
follow the free-form protocol) constrain FC answers to ``output: a, b`` with a and b two
distinct candidates, and FA answers to ``output: w, w, w, w, w.`` with lowercase words. A
constrained answer ends when the grammar does, so its token cap is raised to
`Protocol.structured_min_tokens` to keep long candidate words from being cut off mid-word.

`run_chunk` runs one chunk in lock-step passes (what Ray workers and the hf backend use);
`driver.run_pipelined` feeds the same `ChunkRun`s to an engine that never waits.
"""

from __future__ import annotations

import hashlib
import logging
import time
from typing import NamedTuple

import pyarrow as pa

from . import logs
from .backends import Backend, GenRequest
from .config import Config, ModelCfg
from .errors import PipelineError
from .paradigms import get as get_paradigm
from .prompts import chat_messages
from .rules import Rules

log = logging.getLogger(__name__)

_FA_LETTERS = "a-z"
_CONNECTORS = "-'’"


def derive_seed(*parts: int) -> int:
    """A seed in [0, 2**63) from integers, stable across runs, platforms and chunkings."""
    digest = hashlib.sha256(":".join(str(int(p)) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


def fc_regex(candidates: list[str]) -> str:
    """Regex for ``output: a, b`` with a and b two distinct candidates (structured FC).

    Each candidate is escaped once, so building it costs a few joins, not a character loop
    per candidate pair."""
    esc = [_esc(c) for c in candidates]
    alts = [f"{e}, (?:{'|'.join(x for x, b in zip(esc, candidates) if b != a)})" for a, e in zip(candidates, esc)]
    return f"output: (?:{'|'.join(alts)})"


def fc_choices(candidates: list[str]) -> list[str]:
    """Every allowed structured FC answer (for backends that constrain by choice lists)."""
    return [f"output: {a}, {b}" for a in candidates for b in candidates if a != b]


def fa_regex(k: int, words: list[str] | None = None) -> str:
    """Regex for ``output: w1, ..., wk.`` with lowercase words (structured FA).

    A word is 1-24 lowercase letters: a-z plus every other lowercase letter the vocabulary
    uses (so a French vocabulary allows é, è, ç ...), joined once by a hyphen or apostrophe
    when the vocabulary has such words. Grammar engines read ASCII classes only, so the
    letters are listed rather than written as a Unicode property.
    """
    extra = sorted({ch for w in words or [] for ch in w.lower() if ch.isalpha() and not "a" <= ch <= "z"})
    letters = "[" + _FA_LETTERS + "".join(_esc(ch) if not ch.isalnum() else ch for ch in extra) + "]{1,24}"
    joins = sorted({ch for w in words or [] for ch in w if ch in _CONNECTORS})
    word = letters + (f"(?:[{''.join(_esc(c) for c in joins)}]{letters})?" if joins else "")
    return f"output: {word}(?:, {word}){{{k - 1}}}\\."


def safe_text(text: str | None) -> str:
    """Model output as storable UTF-8: lone surrogates (from a broken decoder or an API) are
    kept as backslash escapes instead of crashing the hash and the Parquet writer."""
    if text is None:
        return ""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _esc(word: str) -> str:
    return "".join(c if c.isalnum() else "\\" + c for c in word)


def retry_sampling(cfg: Config, model_cfg: ModelCfg) -> tuple[float, float]:
    t = model_cfg.retry_temperature if model_cfg.retry_temperature is not None else cfg.behave.retry_temperature
    p = model_cfg.retry_top_p if model_cfg.retry_top_p is not None else cfg.behave.retry_top_p
    return t, p


class Renderer:
    """The model's chat template, rendered once and filled per prompt.

    The template is rendered around a placeholder user message; a prompt is then the
    prefix, the user text and the suffix: microseconds instead of a Jinja render per
    request. Templates that strip the message (Llama 3, Gemma) are detected and the text is
    stripped the same way. The fill is compared with a full render on the first prompts of
    each kind and on every `CHECK_EVERY`-th prompt after; any difference turns the fill off
    for good and every prompt is rendered in full (`tests/test_behave.py` checks the fill
    byte for byte against `apply_chat_template` on every trial of a plan).
    """

    PLACEHOLDER = "\u27e6user-message-7f3a\u27e7"
    CHECK_FIRST = 8
    CHECK_EVERY = 997

    def __init__(self, backend: Backend, system_prompt: str | None = None):
        self.backend, self.system = backend, system_prompt
        self.calls = 0
        self.mode: str | None = None
        if not backend.renders_text:
            return
        shell = backend.render(chat_messages(self.PLACEHOLDER, system_prompt))
        if shell.count(self.PLACEHOLDER) == 1:
            self.prefix, self.suffix = shell.split(self.PLACEHOLDER)
            self.mode = "raw"

    def full(self, user: str) -> str:
        return self.backend.render(chat_messages(user, self.system))

    def __call__(self, user: str) -> str:
        if self.mode is None:
            return self.full(user)
        self.calls += 1
        text = self.prefix + (user.strip() if self.mode == "strip" else user) + self.suffix
        if self.calls <= self.CHECK_FIRST or self.calls % self.CHECK_EVERY == 0:
            real = self.full(user)
            if real != text:
                stripped = self.prefix + user.strip() + self.suffix
                if self.mode == "raw" and self.calls == 1 and real == stripped:
                    self.mode = "strip"
                    return real
                log.warning("behave: the chat template does not render as a fixed prefix + message + suffix; "
                            "rendering every prompt in full")
                self.mode = None
                return real
        return text


class Protocol:
    """How one generated paradigm turns a trial's next attempt into a request and its answer
    into a parsed result (METHOD.md §2-§3); each paradigm subclasses it (`paradigms`).

    The schedule of attempts (`next_attempt`) is shared: attempt 0 with the main prompt; if the
    answer is not ``ok`` and the paradigm repairs (`repairs`), attempt 1 greedy with the repair
    prompt (`behave.repair`), then attempts 2.. sampled (`behave.retries`), each quoting the
    latest bad answer. A paradigm without repairs (FA) has attempt 0 only.
    """

    repairs = True
    structured_min_tokens = 0

    def __init__(self, backend: Backend, cfg: Config, model_cfg: ModelCfg):
        b = cfg.behave
        self.cfg, self.rules = cfg, Rules.of(cfg)
        self.render = Renderer(backend, model_cfg.system_prompt)
        self.choices = backend.structured == "choices"
        self.retry = retry_sampling(cfg, model_cfg)
        self.repair, self.retries = b.repair, b.retries

    def cap(self, max_tokens: int, structured: bool) -> int:
        """The token cap: a constrained answer ends when its grammar does, so it gets at least
        `structured_min_tokens` to keep long words from being cut off mid-word."""
        return max(max_tokens, self.structured_min_tokens) if structured else max_tokens

    @staticmethod
    def kind(attempt: int) -> str:
        return ("main", "repair")[attempt] if attempt < 2 else "retry"

    def next_attempt(self, attempt: int, status: str) -> int | None:
        """The attempt after `attempt` ended with `status`, or None when the trial is final.

        Attempt numbers are fixed by role (0 main, 1 repair, 2 + k the k-th retry), so a
        retry's seed is the same with or without the repair prompt configured."""
        if not self.repairs or status == "ok":
            return None
        nxt = attempt + 1 if attempt > 0 else (1 if self.repair else 2)
        return nxt if nxt == 1 or nxt - 2 < self.retries else None

    def sampling(self, attempt: int, seed_base: int, trial_id: int) -> tuple[float, float, int | None]:
        """(temperature, top_p, seed) of a repairable attempt: greedy main and repair, then
        sampled retries seeded by (`seed_base`, trial, attempt)."""
        temperature, top_p = (0.0, 1.0) if attempt < 2 else self.retry
        seed = None if temperature <= 0 else derive_seed(seed_base, trial_id, attempt)
        return temperature, top_p, seed

    def request(self, trial: dict, attempt: int, latest: str | None) -> tuple[GenRequest, str, int | None]:
        """(request, SHA-256 of the rendered prompt, seed) of one attempt."""
        raise NotImplementedError

    def parse(self, trial: dict, text: str):
        raise NotImplementedError


_COLUMNS = [f.name for f in logs.SCHEMA]


class Attempt(NamedTuple):
    """One request of one trial, handed out by `ChunkRun.take`; its answer goes back with
    `ChunkRun.record` (the driver sends ``request`` to the engine and keeps the rest)."""

    run: "ChunkRun"
    pos: int
    """The trial's position in its chunk."""
    attempt: int
    """0 main, 1 repair, 2... retries (`Protocol.kind`)."""
    request: GenRequest
    prompt_sha: str
    seed: int | None


class ChunkRun:
    """The attempts of one chunk of trials, from first request to log rows.

    `take(limit)` hands out the next attempt of trials that are waiting for one (in chunk
    order), `record` takes an answer back; a trial's attempts depend only on its own answers,
    so the same rows result however requests of several chunks share engine calls. `table`
    orders rows by (attempt, position in chunk), the order of a lock-step run: main pass,
    then repair pass, then each retry pass.
    """

    def __init__(self, proto: Protocol, trials: list[dict]):
        self.proto, self.trials = proto, trials
        self.next = [0] * len(trials)
        self.latest: list[str | None] = [None] * len(trials)
        self.ready = list(range(len(trials)))
        self.outstanding = 0
        self.final = 0
        self.rows: dict[str, list] = {c: [] for c in _COLUMNS}
        self.order: list[tuple[int, int]] = []
        self.last_row: dict[int, int] = {}

    @property
    def done(self) -> bool:
        return self.final == len(self.trials)

    def take(self, limit: int | None = None) -> list[Attempt]:
        n = len(self.ready) if limit is None else min(limit, len(self.ready))
        taken, self.ready = self.ready[:n], self.ready[n:]
        out = []
        for pos in taken:
            attempt = self.next[pos]
            req, sha, seed = self.proto.request(self.trials[pos], attempt, self.latest[pos])
            out.append(Attempt(self, pos, attempt, req, sha, seed))
        self.outstanding += len(out)
        return out

    def record(self, item: Attempt, res, latency: float) -> None:
        """Log the answer `res` to `item` (one of this run's `take`) and queue the trial's next attempt."""
        pos, attempt, sha, seed = item.pos, item.attempt, item.prompt_sha, item.seed
        t = self.trials[pos]
        parsed = self.proto.parse(t, res.text)
        r = self.rows
        for col, value in (("trial_id", t["trial_id"]), ("cue_idx", t["cue_idx"]), ("cue", t["cue"]),
                           ("candidates", t.get("candidates")), ("run", t.get("run")), ("attempt", attempt),
                           ("attempt_kind", self.proto.kind(attempt)), ("raw_output", res.text),
                           ("picks", parsed.picks), ("extracted", parsed.raw), ("status", parsed.status),
                           ("final", False), ("seed", seed), ("prompt_sha", sha),
                           ("n_prompt_tokens", res.n_prompt_tokens), ("n_output_tokens", res.n_output_tokens),
                           ("latency_s", latency if getattr(res, "latency_s", None) is None else res.latency_s)):
            r[col].append(value)
        self.order.append((attempt, pos))
        self.last_row[pos] = len(self.order) - 1
        self.outstanding -= 1
        self.latest[pos] = res.text
        nxt = self.proto.next_attempt(attempt, parsed.status)
        if nxt is None:
            self.final += 1
        else:
            self.next[pos] = nxt
            self.ready.append(pos)

    def table(self) -> pa.Table:
        for i in self.last_row.values():
            self.rows["final"][i] = True
        idx = sorted(range(len(self.order)), key=self.order.__getitem__)
        return pa.table({f.name: pa.array([self.rows[f.name][i] for i in idx], f.type) for f in logs.SCHEMA})


def generate(backend: Backend, reqs: list[GenRequest]):
    """`backend.generate` with its answers checked and made storable; also returns the
    wall time per request (the log's latency)."""
    t0 = time.perf_counter()
    res = backend.generate(reqs)
    if len(res) != len(reqs):
        raise PipelineError(f"backend '{backend.name}' returned {len(res)} answers for {len(reqs)} requests")
    for r in res:
        r.text = safe_text(r.text)
    return res, (time.perf_counter() - t0) / max(len(reqs), 1)


def run_chunk(backend: Backend, cfg: Config, model_cfg: ModelCfg, paradigm: str, chunk: pa.Table,
              words: list[str] | None = None, proto: Protocol | None = None) -> pa.Table:
    """Run one chunk of plan rows in lock-step passes and return its log rows (no files touched).

    One engine call per pass: the main pass over every trial, then the repair pass over the
    non-compliant ones, then each retry pass. The local stage uses the pipelined
    `driver.run_pipelined` instead when the backend's answers do not depend on batch
    composition; both give the same rows.

    Args:
        backend: a started backend for `model_cfg`.
        cfg: the experiment config.
        model_cfg: the model being run.
        paradigm: a registered paradigm (`paradigms`), which answers the chunk.
        chunk: rows of the plan the paradigm runs.
        words: the run's vocabulary, whose letters structured FA answers may use (a-z only
            when None).
        proto: a `Protocol` to reuse across chunks (its rendered template is kept).

    Returns:
        Log rows (the paradigm's log schema), every attempt of every trial, one final row per trial.
    """
    return get_paradigm(paradigm).run_chunk(backend, cfg, model_cfg, chunk.to_pylist(), words, proto)

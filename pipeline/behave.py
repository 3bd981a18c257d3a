"""`behave` stage: run the trial plans through an LLM into resumable Parquet trial logs.

For every model and paradigm: the pending trials are the plan (restricted to this shard,
``trial_id % N == I``) minus the trial_ids already in finished parts; they run in chunks
of `behave.chunk_size`, and each finished chunk becomes one part (`logs.write_part`).
Killing the process loses at most the chunk in flight; running the same command again
continues. `pending_trials` and `run_chunk` are the whole unit of work (trials in, log rows
out), so a distributed driver can hand chunks to workers, publish with `logs.write_part` and
complete the record with `finalize`.

FC (METHOD.md §2): a greedy main pass; non-compliant answers get one greedy repair prompt
(`behave.repair`) and then up to `behave.retries` sampled retries (`retry_temperature`,
`retry_top_p`, per-model overrides), each quoting the latest bad answer. Every attempt is a
log row; the last one of a trial has ``final = true`` and keeps its status even when still
invalid. Invalid picks are never replaced.

FA (METHOD.md §3): one sampled request per trial.

FC scored (`fc_scored`, beyond the paper): the FC plan and prompt, answered by the model's
probability of each candidate as the first pick instead of a generated answer (`scored`);
one row per trial in its own log layout (`logs.SCORED_SCHEMA`).

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
`_STRUCTURED_MIN_TOKENS` to keep long candidate words from being cut off mid-word.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from . import logs, paths
from .backends import Backend, GenRequest, backend_class, get_backend
from .config import Config, ModelCfg
from .errors import PipelineError
from .manifest import Manifest, fingerprint
from .options import Options, select
from .parse import STATUSES, parse_fa, parse_fc
from .prompts import chat_messages, fa_prompt, fc_prompt, fc_repair_prompt, prompt_hashes, prompt_sha
from .rules import Rules

log = logging.getLogger(__name__)

_FORMAT = 1
_STRUCTURED_MIN_TOKENS = {"fc": 32, "fa": 64}
_FA_LETTERS = "a-z"
_CONNECTORS = "-'’"


def derive_seed(*parts: int) -> int:
    """A seed in [0, 2**63) from integers, stable across runs, platforms and chunkings."""
    digest = hashlib.sha256(":".join(str(int(p)) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


def fc_regex(candidates: list[str]) -> str:
    """Regex for ``output: a, b`` with a and b two distinct candidates (structured FC)."""
    alts = []
    for a in candidates:
        others = "|".join(_esc(b) for b in candidates if b != a)
        alts.append(f"{_esc(a)}, (?:{others})")
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


def _retry_sampling(cfg: Config, model_cfg: ModelCfg) -> tuple[float, float]:
    t = model_cfg.retry_temperature if model_cfg.retry_temperature is not None else cfg.behave.retry_temperature
    p = model_cfg.retry_top_p if model_cfg.retry_top_p is not None else cfg.behave.retry_top_p
    return t, p


def behave_inputs(cfg: Config, model_cfg: ModelCfg, paradigm: str) -> dict:
    """Everything a model/paradigm log depends on; its fingerprint guards resumption."""
    from .trials import plan_fingerprint

    b = cfg.behave
    hashes = prompt_hashes()
    d = {"format": _FORMAT, "plan": plan_fingerprint(cfg, paradigm), "backend": b.backend,
         "model": {k: getattr(model_cfg, k) for k in ("name", "path", "revision", "system_prompt",
                                                      "dtype", "extra_eos")}}
    d.update(backend_class(b.backend, cfg).log_settings(cfg))
    if paradigm == "fc_scored":
        from .scored import ANSWER_PREFIX, SCORE_VERSION

        d.update(prompts=[hashes["fc"]], answer_prefix=ANSWER_PREFIX, picks=cfg.trials.fc_picks,
                 scoring=SCORE_VERSION)
    elif paradigm == "fc":
        d.update(prompts=[hashes["fc"], hashes["fc_repair"]], structured=b.structured_fc, repair=b.repair,
                 retries=b.retries, max_tokens=b.fc_max_tokens, retry=_retry_sampling(cfg, model_cfg),
                 seed=cfg.trials.fc_seed, picks=cfg.trials.fc_picks, rules=Rules.of(cfg).name)
    else:
        d.update(prompts=[hashes["fa"]], structured=b.structured_fa, temperature=b.fa_temperature,
                 top_p=b.fa_top_p, max_tokens=b.fa_max_tokens, k=cfg.trials.fa_associates)
    return d


def pending_trials(cfg: Config, model: str, paradigm: str, shard: tuple[int, int] = (0, 1)) -> pa.Table:
    """Plan rows of this shard that have no final row in the model's logs yet, in trial_id order."""
    from .trials import load_trials

    plan = load_trials(cfg, paradigm)
    ids = plan.column("trial_id").to_numpy()
    keep = logs.shard_mask(ids, shard) & ~np.isin(ids, logs.finished_ids(paths.behavior_dir(cfg, model, paradigm)))
    return plan.filter(pa.array(keep))


class _Rows:
    """Log rows of one chunk, in attempt order, converted to `logs.SCHEMA` at the end."""

    def __init__(self):
        self.recs: list[dict] = []

    def add(self, trial: dict, attempt: int, kind: str, parsed, seed, sha, res, latency) -> int:
        self.recs.append({
            "trial_id": trial["trial_id"], "cue_idx": trial["cue_idx"], "cue": trial["cue"],
            "candidates": trial.get("candidates"), "run": trial.get("run"), "attempt": attempt,
            "attempt_kind": kind, "raw_output": res.text, "picks": parsed.picks, "extracted": parsed.raw,
            "status": parsed.status, "final": False, "seed": seed, "prompt_sha": sha,
            "n_prompt_tokens": res.n_prompt_tokens, "n_output_tokens": res.n_output_tokens,
            "latency_s": latency})
        return len(self.recs) - 1

    def table(self) -> pa.Table:
        return pa.Table.from_pylist(self.recs, schema=logs.SCHEMA)


def _generate(backend: Backend, reqs: list[GenRequest]):
    t0 = time.perf_counter()
    res = backend.generate(reqs)
    if len(res) != len(reqs):
        raise PipelineError(f"backend '{backend.name}' returned {len(res)} answers for {len(reqs)} requests")
    for r in res:
        r.text = safe_text(r.text)
    return res, (time.perf_counter() - t0) / max(len(reqs), 1)


def _run_fc(backend: Backend, cfg: Config, model_cfg: ModelCfg, trials: list[dict]) -> pa.Table:
    b, n_picks = cfg.behave, cfg.trials.fc_picks
    rules = Rules.of(cfg)
    structured = b.structured_fc
    max_tokens = max(b.fc_max_tokens, _STRUCTURED_MIN_TOKENS["fc"]) if structured else b.fc_max_tokens
    rows = _Rows()
    last_row: dict[int, int] = {}
    latest: dict[int, str] = {}

    def attempt(todo: list[dict], number: int, kind: str, temperature: float, top_p: float) -> list[dict]:
        reqs, shas, seeds = [], [], []
        for t in todo:
            user = (fc_prompt(t["cue"], t["candidates"], n_picks) if number == 0 else
                    fc_repair_prompt(t["cue"], t["candidates"], latest[t["trial_id"]], n_picks))
            text = backend.render(chat_messages(user, model_cfg.system_prompt))
            seed = None if temperature <= 0 else derive_seed(cfg.trials.fc_seed, t["trial_id"], number)
            reqs.append(GenRequest(text=text, max_tokens=max_tokens, temperature=temperature, top_p=top_p,
                                   seed=seed, allowed_regex=fc_regex(t["candidates"]) if structured else None,
                                   allowed_choices=fc_choices(t["candidates"]) if structured else None))
            shas.append(prompt_sha(text))
            seeds.append(seed)
        results, latency = _generate(backend, reqs)
        still = []
        for t, res, sha, seed in zip(todo, results, shas, seeds):
            parsed = parse_fc(res.text, t["cue"], t["candidates"], n_picks, rules)
            last_row[t["trial_id"]] = rows.add(t, number, kind, parsed, seed, sha, res, latency)
            latest[t["trial_id"]] = res.text
            if parsed.status != "ok":
                still.append(t)
        return still

    todo = attempt(trials, 0, "main", 0.0, 1.0)
    if todo and b.repair:
        todo = attempt(todo, 1, "repair", 0.0, 1.0)
    temperature, top_p = _retry_sampling(cfg, model_cfg)
    for k in range(b.retries):
        if not todo:
            break
        todo = attempt(todo, 2 + k, "retry", temperature, top_p)
    for i in last_row.values():
        rows.recs[i]["final"] = True
    return rows.table()


def _run_fa(backend: Backend, cfg: Config, model_cfg: ModelCfg, trials: list[dict],
            words: list[str] | None = None) -> pa.Table:
    b, k = cfg.behave, cfg.trials.fa_associates
    structured = b.structured_fa
    max_tokens = max(b.fa_max_tokens, _STRUCTURED_MIN_TOKENS["fa"]) if structured else b.fa_max_tokens
    regex = fa_regex(k, words) if structured else None
    reqs, shas, seeds = [], [], []
    for t in trials:
        text = backend.render(chat_messages(fa_prompt(t["cue"]), model_cfg.system_prompt))
        seed = derive_seed(t["seed"], t["cue_idx"])
        reqs.append(GenRequest(text=text, max_tokens=max_tokens, temperature=b.fa_temperature, top_p=b.fa_top_p,
                               seed=seed, allowed_regex=regex))
        shas.append(prompt_sha(text))
        seeds.append(seed)
    results, latency = _generate(backend, reqs)
    rows = _Rows()
    for t, res, sha, seed in zip(trials, results, shas, seeds):
        i = rows.add(t, 0, "main", parse_fa(res.text, t["cue"], k), seed, sha, res, latency)
        rows.recs[i]["final"] = True
    return rows.table()


def run_chunk(backend: Backend, cfg: Config, model_cfg: ModelCfg, paradigm: str, chunk: pa.Table,
              words: list[str] | None = None) -> pa.Table:
    """Run one chunk of plan rows and return its log rows (pure: no files touched).

    Args:
        backend: a started backend for `model_cfg`.
        cfg: the experiment config.
        model_cfg: the model being run.
        paradigm: ``fc``, ``fa`` or ``fc_scored``.
        chunk: plan rows (`trials.FC_SCHEMA` / `FA_SCHEMA`; FC rows for ``fc_scored``).
        words: the run's vocabulary, whose letters structured FA answers may use (a-z only
            when None).

    Returns:
        Log rows (`logs.SCHEMA`; `logs.SCORED_SCHEMA` for ``fc_scored``), every attempt of every
        trial, one final row per trial.
    """
    trials = chunk.to_pylist()
    if not trials:
        return (logs.SCORED_SCHEMA if paradigm == "fc_scored" else logs.SCHEMA).empty_table()
    if paradigm == "fc_scored":
        from .scored import run_trials

        return run_trials(backend, cfg, model_cfg, trials)
    if paradigm == "fc":
        return _run_fc(backend, cfg, model_cfg, trials)
    if paradigm == "fa":
        return _run_fa(backend, cfg, model_cfg, trials, words)
    raise ValueError(f"unknown paradigm {paradigm!r}")


def summarize(directory, paradigm: str, k: int = 5) -> dict:
    """Status counts and compliance over the final rows of a log directory.

    FC compliance is the share of trials whose final answer is ``ok``; ``first_try_ok`` is the
    share compliant without repair or retries. FA adds the paper's quality metrics (mean
    associates, full compliance = k associates, cue repetition). ``fc_scored``: `scored.summarize`.
    """
    if paradigm == "fc_scored":
        from .scored import summarize as summarize_scored

        return summarize_scored(directory)
    cols = ["status", "attempt"] + (["picks", "cue"] if paradigm == "fa" else [])
    counts: Counter = Counter()
    attempts: Counter = Counter()
    n = n_assoc = full = cue_rep = 0
    for batch in logs.iter_final(directory, cols):
        counts.update(batch.column("status").to_pylist())
        ok = pc.equal(batch.column("status"), "ok")
        attempts.update(pc.filter(batch.column("attempt"), ok).to_pylist())
        n += batch.num_rows
        if paradigm == "fa":
            lens = pc.list_value_length(batch.column("picks")).to_numpy(zero_copy_only=False)
            n_assoc += int(lens.sum())
            full += int((lens == k).sum())
            for cue, picks in zip(batch.column("cue").to_pylist(), batch.column("picks").to_pylist()):
                cue_rep += cue.lower() in picks
    out = {"n_trials": n, "status": {s: counts.get(s, 0) for s in STATUSES if counts.get(s, 0)},
           "compliance": round(counts.get("ok", 0) / n, 4) if n else None}
    if paradigm == "fc":
        out["ok_by_attempt"] = {int(a): c for a, c in sorted(attempts.items())}
        out["first_try_ok"] = round(attempts.get(0, 0) / n, 4) if n else None
    else:
        out.update(mean_associates=round(n_assoc / n, 3) if n else None,
                   full_compliance=round(full / n, 4) if n else None,
                   cue_repetition=round(cue_rep / n, 4) if n else None)
    return out


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


def run(cfg: Config, opts) -> None:
    """`behave` stage entry point (see the module docstring).

    Args:
        cfg: experiment config.
        opts: CLI options (`options.Options`); uses ``model``, ``paradigm``, ``shard`` (I, N),
            ``limit`` and ``force``. ``--engine ray`` is dispatched by the CLI to
            `distributed.run_behave` instead.
    """
    o = Options.of(opts)
    sel = select(cfg, o)
    shard, limit, force = o.shard, o.limit, o.force
    man = Manifest(cfg.run_dir)
    for model_cfg in (cfg.model(name) for name in sel.models):
        paradigms = sel.paradigms
        backend = None
        try:
            for paradigm in paradigms:
                job = open_log(cfg, man, model_cfg, paradigm, force)
                if job is None:
                    continue
                key, directory, _ = job
                with logs.WriterLock(directory, shard):
                    todo = pending_trials(cfg, model_cfg.name, paradigm, shard)
                    if limit is not None:
                        todo = todo.slice(0, max(limit, 0))
                    if todo.num_rows:
                        if backend is None:
                            backend = get_backend(cfg.behave.backend, model_cfg, cfg)
                        _run_pending(backend, cfg, model_cfg, paradigm, todo, directory, shard, key)
                finalize(cfg, model_cfg, paradigm)
        finally:
            if backend is not None:
                backend.close()


def open_log(cfg: Config, man: Manifest, model_cfg, paradigm: str, force: bool) -> tuple[str, Path, str] | None:
    """Get one model/paradigm log ready for writing, or None when it is already complete.

    Shared by the local and the Ray drivers so both skip, refuse (changed inputs) and
    move stale logs aside (``--force``) the same way.

    Returns:
        ``(stage key, log directory, inputs fingerprint)``, with the stage recorded as started.
    """
    key = stage_key(model_cfg.name, paradigm)
    directory = paths.behavior_dir(cfg, model_cfg.name, paradigm)
    fp = fingerprint(behave_inputs(cfg, model_cfg, paradigm))
    rec = man.stage(key)
    if man.check(key, fp, force):
        log.info("behave: %s is complete, skipping", key)
        return None
    if force and rec is not None and rec.get("inputs") != fp:
        with logs.WriterLock(directory, (0, 1)):
            _move_stale(directory, key)
    man.start(key, fp)
    return key, directory, fp


def _run_pending(backend, cfg, model_cfg, paradigm, todo: pa.Table, directory, shard, key) -> None:
    from .vocab import load_run_vocab

    words = load_run_vocab(cfg)
    size = cfg.behave.chunk_size
    done = ok = tokens = 0
    t0 = last_log = time.perf_counter()
    log.info("behave: %s, %d trials to run (shard %d/%d), chunks of %d", key, todo.num_rows, *shard, size)
    with _progress(todo.num_rows, key) as bar:
        for start in range(0, todo.num_rows, size):
            rows = run_chunk(backend, cfg, model_cfg, paradigm, todo.slice(start, size), words)
            part = logs.write_part(directory, rows, shard)
            final = rows.filter(rows.column("final"))
            done += final.num_rows
            ok += pc.sum(pc.equal(final.column("status"), "ok")).as_py() or 0
            tokens += (pc.sum(rows.column("n_prompt_tokens")).as_py() or 0) + \
                      (pc.sum(rows.column("n_output_tokens")).as_py() or 0)
            bar.update(final.num_rows)
            bar.set_postfix(ok=f"{ok / max(done, 1):.1%}")
            if bar.disable and time.perf_counter() - last_log > 30:
                last_log = time.perf_counter()
                log.info("behave: %s %d/%d trials, %.2f trials/s, %.1f%% ok", key, done, todo.num_rows,
                         done / (last_log - t0), 100 * ok / max(done, 1))
            log.debug("behave: %s wrote %s (%d rows)", key, part.name, rows.num_rows)
    dt = time.perf_counter() - t0
    log.info("behave: %s ran %d trials in %.1f s (%.2f trials/s, %.0f tokens/s), %.1f%% ok",
             key, done, dt, done / dt if dt else 0, tokens / dt if dt else 0, 100 * ok / max(done, 1))


def stage_key(model: str, paradigm: str) -> str:
    """Manifest key of one model/paradigm log."""
    return f"behave/{model}/{paradigm}"


def finalize(cfg: Config, model_cfg: ModelCfg, paradigm: str) -> dict | None:
    """Mark a model/paradigm complete in the manifest once every planned trial has a final row.

    Called after each local run (or by a distributed driver after its last chunk); with shards,
    the run that finishes last completes the record.

    Returns:
        The summary (`summarize`) when complete, else None.
    """
    from .trials import load_trials

    key = stage_key(model_cfg.name, paradigm)
    directory = paths.behavior_dir(cfg, model_cfg.name, paradigm)
    plan_ids = load_trials(cfg, paradigm).column("trial_id").to_numpy()
    have = logs.finished_ids(directory)
    missing = int((~np.isin(plan_ids, have)).sum())
    summary = summarize(directory, paradigm, cfg.trials.fa_associates)
    status = ", ".join(f"{s} {c}" for s, c in summary["status"].items())
    if missing:
        log.info("behave: %s has %d of %d trials (%s); %d still to run (other shards, or --limit)",
                 key, len(have), len(plan_ids), status, missing)
        return None
    Manifest(cfg.run_dir).complete(key, fingerprint(behave_inputs(cfg, model_cfg, paradigm)), summary,
                                   outputs=logs.list_parts(directory))
    log.info("behave: %s complete, %d trials: %s; compliance %.1f%%", key, summary["n_trials"], status,
             100 * (summary["compliance"] or 0))
    return summary

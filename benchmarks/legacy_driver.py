"""The behave driver as it was before the pipelined one (commit c3626e6), frozen as the
benchmark's baseline: chunk by chunk in lock-step with the engine (render every prompt
through the chat template, build the structured-output regex character by character, call
`generate` and wait, parse, then a repair pass and up to five retry passes, each another
blocking call over ever fewer trials). Not used by the pipeline; `benchmarks.driver` and
`tests/test_driver.py` compare the current driver's logs and speed against it.
"""

from __future__ import annotations

import pyarrow as pa

from pipeline import logs
from pipeline.attempts import derive_seed, fa_regex, fc_choices, generate, retry_sampling
from pipeline.backends import Backend, GenRequest
from pipeline.config import Config, ModelCfg
from pipeline.parse import parse_fa, parse_fc
from pipeline.prompts import chat_messages, fa_prompt, fc_prompt, fc_repair_prompt, prompt_sha
from pipeline.rules import Rules

STRUCTURED_MIN_TOKENS = {"fc": 32, "fa": 64}
"""As `attempts` had it at the time."""


def fc_regex(candidates: list[str]) -> str:
    """Regex for ``output: a, b`` with a and b two distinct candidates (structured FC)."""
    alts = []
    for a in candidates:
        others = "|".join(_esc(b) for b in candidates if b != a)
        alts.append(f"{_esc(a)}, (?:{others})")
    return f"output: (?:{'|'.join(alts)})"


def _esc(word: str) -> str:
    return "".join(c if c.isalnum() else "\\" + c for c in word)


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


def _run_fc(backend: Backend, cfg: Config, model_cfg: ModelCfg, trials: list[dict]) -> pa.Table:
    b, n_picks = cfg.behave, cfg.trials.fc_picks
    rules = Rules.of(cfg)
    structured = b.structured_fc
    max_tokens = max(b.fc_max_tokens, STRUCTURED_MIN_TOKENS["fc"]) if structured else b.fc_max_tokens
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
        results, latency = generate(backend, reqs)
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
    temperature, top_p = retry_sampling(cfg, model_cfg)
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
    max_tokens = max(b.fa_max_tokens, STRUCTURED_MIN_TOKENS["fa"]) if structured else b.fa_max_tokens
    regex = fa_regex(k, words) if structured else None
    reqs, shas, seeds = [], [], []
    for t in trials:
        text = backend.render(chat_messages(fa_prompt(t["cue"]), model_cfg.system_prompt))
        seed = derive_seed(t["seed"], t["cue_idx"])
        reqs.append(GenRequest(text=text, max_tokens=max_tokens, temperature=b.fa_temperature, top_p=b.fa_top_p,
                               seed=seed, allowed_regex=regex))
        shas.append(prompt_sha(text))
        seeds.append(seed)
    results, latency = generate(backend, reqs)
    rows = _Rows()
    for t, res, sha, seed in zip(trials, results, shas, seeds):
        i = rows.add(t, 0, "main", parse_fa(res.text, t["cue"], k), seed, sha, res, latency)
        rows.recs[i]["final"] = True
    return rows.table()


def run_chunk(backend: Backend, cfg: Config, model_cfg: ModelCfg, paradigm: str, chunk: pa.Table,
              words: list[str] | None = None) -> pa.Table:
    """One chunk of plan rows to log rows, the old way."""
    trials = chunk.to_pylist()
    if not trials:
        return logs.SCHEMA.empty_table()
    if paradigm == "fc":
        return _run_fc(backend, cfg, model_cfg, trials)
    return _run_fa(backend, cfg, model_cfg, trials, words)

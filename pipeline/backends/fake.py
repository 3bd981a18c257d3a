"""Deterministic stand-in for an LLM, for plumbing tests only (no model, no randomness).

FC prompts are answered with the first two candidates, FA prompts with five words chosen by
the request seed. With ``fail=True`` a fixed schedule of bad answers exercises the
compliance loop: keyed by a hash of the cue and candidates, a trial is fine, fixed by the
repair prompt, fixed by a sampled retry (only for some seeds) or never fixed.

Scoring (`score`) ranks continuations in request order, each 0.75 nats below the one before
plus a hashed jitter under 0.25, so the scored favourites are the generated FC picks.

Environment (read by `FakeBackend.from_env`, so `python -m pipeline behave` subprocesses in
tests can be steered): ``PIPELINE_FAKE_FAIL=1`` turns the schedule on;
``PIPELINE_FAKE_DELAY=SECONDS`` sleeps that long per `generate` call (to kill a run mid-way).
"""

from __future__ import annotations

import hashlib
import os
import re
import time
from typing import Sequence

from . import register
from .base import Backend, GenRequest, GenResult, ScoreRequest, ScoreResult

_CANDS = re.compile(r"candidates: \[([^\]]*)\]")
_CUE_FC = re.compile(r"input word: (.*)")
_CUE_FA = re.compile(r"input: (.*)\.")
_FA_WORDS = [f"assoc{c}" for c in "abcdefghij"]


def _h(*parts) -> int:
    return int.from_bytes(hashlib.sha256("|".join(map(str, parts)).encode()).digest()[:8], "big")


@register("fake")
class FakeBackend(Backend):
    """Rule-based answers; see the module docstring."""

    rank = 9
    needs_weights = False
    scores = True
    stand_in = True

    def __init__(self, fail: bool = False, delay_s: float = 0.0):
        self.fail = fail
        self.delay_s = delay_s
        self.calls = 0
        self.requests: list[GenRequest] = []
        self.score_requests: list[ScoreRequest] = []

    @classmethod
    def create(cls, model_cfg=None, cfg=None, **overrides) -> "FakeBackend":
        return cls(**overrides) if overrides else cls.from_env()

    @classmethod
    def from_env(cls) -> "FakeBackend":
        return cls(fail=os.environ.get("PIPELINE_FAKE_FAIL") == "1",
                   delay_s=float(os.environ.get("PIPELINE_FAKE_DELAY") or 0))

    def render(self, messages: list[dict]) -> str:
        return "".join(f"<{m['role']}>\n{m['content']}\n" for m in messages) + "<assistant>\n"

    def generate(self, requests: Sequence[GenRequest]) -> list[GenResult]:
        self.calls += 1
        self.requests.extend(requests)
        if self.delay_s:
            time.sleep(self.delay_s)
        out = []
        for r in requests:
            text = self._text(r)
            ans = self._fc(text, r) if "candidates: [" in text else self._fa(text, r)
            out.append(GenResult(text=ans, n_prompt_tokens=len(text.split()), n_output_tokens=len(ans.split())))
        return out

    def score(self, requests: Sequence[ScoreRequest]) -> list[ScoreResult]:
        self.calls += 1
        self.score_requests.extend(requests)
        if self.delay_s:
            time.sleep(self.delay_s)
        out = []
        for r in requests:
            lps = [-(1.0 + 0.75 * i) - (_h(r.text, c) % 1000) / 4000 for i, c in enumerate(r.continuations)]
            n = [len(c.split()) + 1 + r.end_of_turn for c in r.continuations]
            out.append(ScoreResult(logprobs=lps, n_tokens=n, n_prompt_tokens=len(r.text.split())))
        return out

    def _fc(self, text: str, r: GenRequest) -> str:
        cands = [c.strip() for c in _CANDS.findall(text)[-1].split(",")]
        cue = _CUE_FC.findall(text)[-1].strip()
        good = f"output: {cands[0]}, {cands[1]}"
        if not self.fail:
            return good
        kind = _h(cue, *cands) % 6
        repair = text.count("Your last answer was invalid") > 0
        if kind == 1:
            return good if repair else "I would say the first ones"
        if kind == 2:
            if not repair:
                return f"output: {cue}, {cands[0]}"
            if r.greedy:
                return f"output: {cands[0]}, {cands[0]}"
            return good if r.seed is not None and r.seed % 3 == 0 else "output: nothing"
        if kind == 3:
            return "" if not repair else "still wrong"
        return good

    def _fa(self, text: str, r: GenRequest) -> str:
        cue = _CUE_FA.findall(text)[-1].strip()
        seed = r.seed or 0
        words = [_FA_WORDS[(seed + i * 7) % len(_FA_WORDS)] for i in range(5)]
        if self.fail and _h(cue, seed) % 4 == 0:
            return f"output: {words[0]}, {cue}."
        return "output: " + ", ".join(words) + "."

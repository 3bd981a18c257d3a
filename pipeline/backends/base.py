"""The one interface every generation backend implements.

A backend turns rendered prompts into answers. The behave stage renders each prompt once
(via `Backend.render`, i.e. the model's own chat template), hashes that exact string into
the trial log, and hands the string to `generate`, so the logged hash is the prompt the
model saw whatever the backend.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence


@dataclass
class GenRequest:
    """One prompt with its decoding settings.

    Attributes:
        text: the rendered prompt (chat template applied); if None, `messages` is rendered.
        messages: chat messages, used only when `text` is None.
        max_tokens: new-token cap.
        temperature: 0 means greedy (then `top_p` and `seed` are ignored).
        top_p: nucleus sampling mass.
        seed: per-request sampling seed (see each backend for how it is honoured).
        allowed_regex: constrain the answer to this regular expression (structured output).
        allowed_choices: constrain the answer to exactly one of these strings; backends that
            cannot compile regexes (hf) use this instead. FC sends both.
    """
    text: str | None = None
    messages: list[dict] | None = None
    max_tokens: int = 16
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    allowed_regex: str | None = None
    allowed_choices: list[str] | None = field(default=None, repr=False)

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0


@dataclass
class GenResult:
    """One answer: decoded text (special tokens skipped) and token counts.

    `latency_s` is the request's own wall time where the backend measures it (a remote
    request); batch engines leave it None and the behave stage logs the batch's time per
    request instead.
    """
    text: str
    n_prompt_tokens: int
    n_output_tokens: int
    latency_s: float | None = None


class Backend:
    """Base class: subclasses implement `render`, `generate` and (if they hold resources) `close`,
    and `create`, which builds one from the config; `backends.register` names them."""

    name = "base"
    rank = 5
    """Where `backends.names` lists it: the production backend first, test stand-ins last."""
    structured = "regex"
    """How structured outputs are enforced: ``regex`` (`GenRequest.allowed_regex`) or
    ``choices`` (`allowed_choices`, built only for such backends)."""
    batch_invariant = True
    """Whether an answer depends only on its own request, not on the requests sharing an
    engine call (per-request seeds); only such backends may be fed by the pipelined driver."""
    needs_weights = True
    """False for backends that reach a model elsewhere (an API): its `models[].path` may be unset."""
    model_keys: tuple[str, ...] = ()
    """`models[]` keys only this backend reads; the config refuses them on models of other backends."""

    @classmethod
    def create(cls, model_cfg, cfg, **overrides) -> "Backend":
        """Start this backend for `model_cfg` with the settings of `cfg` (overrides win)."""
        raise NotImplementedError

    @classmethod
    def gpus_per_engine(cls, model_cfg) -> int:
        """GPUs one engine of `model_cfg` occupies (what a Ray actor reserves)."""
        return 0

    @classmethod
    def log_settings(cls, cfg, model_cfg=None) -> dict:
        """Settings besides the sampling parameters that change this backend's answers, so
        they belong to the trial log's fingerprint (hf: the batch size, which seeds batches;
        openai: the server's model id and request protocol)."""
        return {}

    @classmethod
    def check_config(cls, cfg, index: int, model_cfg, fail) -> None:
        """Validate the `models[index]` keys this backend reads; `fail(key, message)` raises."""

    def stats(self) -> dict:
        """Counters of this backend's work since the previous call (requests, retries, tokens),
        for the behave summary; empty for engines whose trial logs already say everything."""
        return {}

    def render(self, messages: list[dict]) -> str:
        """The exact prompt string for chat `messages`, assistant turn opened."""
        raise NotImplementedError

    def generate(self, requests: Sequence[GenRequest]) -> list[GenResult]:
        """Answer every request, results in request order."""
        raise NotImplementedError

    def close(self) -> None:
        """Free the model (engine processes, memory)."""

    def _text(self, req: GenRequest) -> str:
        if req.text is not None:
            return req.text
        if req.messages is None:
            raise ValueError("GenRequest needs text or messages")
        return self.render(req.messages)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

"""The one interface every generation backend implements.

A backend turns rendered prompts into answers. The behave stage renders each prompt once
(via `Backend.render`, i.e. the model's own chat template), hashes that exact string into
the trial log, and hands the string to `generate`, so the logged hash is the prompt the
model saw whatever the backend.

Backends that can read the model's probabilities also implement `score` (``scores = True``):
the log-probability of given continuations after a prompt, which the scored forced-choice
paradigm (`fc_scored`) needs instead of generated answers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

from ..errors import PipelineError


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
        stage: the paradigm the request belongs to (``fc``, ``fa``); it selects the model's
            EOS set and tokenizer where they differ by paradigm (`models[].extra_eos`,
            `models[].fix_mistral_regex`). None: every stage's EOS, the plain tokenizer.
    """
    text: str | None = None
    messages: list[dict] | None = None
    max_tokens: int = 16
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    allowed_regex: str | None = None
    allowed_choices: list[str] | None = field(default=None, repr=False)
    stage: str | None = None

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


@dataclass
class ScoreRequest:
    """Continuations to score after one prompt.

    Attributes:
        text: the rendered prompt, including any answer prefix every continuation shares.
        continuations: texts appended to `text`; each is scored as its own token sequence.
        end_of_turn: also score the tokenizer's end-of-sequence token after each continuation
            (the answer ends there), so a continuation cannot silently be the start of a
            longer one.
        stage: the paradigm (``fc_scored``): selects the tokenizer as `GenRequest.stage` does.
    """
    text: str
    continuations: list[str]
    end_of_turn: bool = False
    stage: str | None = None


@dataclass
class ScoreResult:
    """Scores of one request, in continuation order.

    Attributes:
        logprobs: natural-log probability of each continuation's tokens given the prompt
            (their per-token log-probabilities summed), under the prompt's tokenization
            followed by the continuation's own tokens in the tokenization of the whole text.
        n_tokens: tokens scored per continuation.
        n_prompt_tokens: tokens of the prompt.
    """
    logprobs: list[float]
    n_tokens: list[int]
    n_prompt_tokens: int


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
    engine call (per-request seeds); only such backends may be fed by the pipelined driver.
    Kernels that round by batch shape (vLLM in bfloat16, README "Resuming") can still move
    answers near a tie, under any driver."""
    needs_weights = True
    """False for backends that reach a model elsewhere (an API): its `models[].path` may be unset."""
    model_keys: tuple[str, ...] = ()
    """`models[]` keys only this backend reads; the config refuses them on models of other backends."""
    scores = False
    """Whether `score` is implemented (the `fc_scored` paradigm needs it)."""
    renders_text = True
    """Whether `render` returns the prompt text itself (the chat template applied), so a fixed
    prefix and suffix around the message can be reused (`attempts.Renderer`); False for
    backends that send the messages (openai: their canonical JSON)."""
    stand_in = False
    """A stand-in for tests (`fake`): accepted by the config, never offered in advice."""

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

    def take_stats(self) -> dict:
        """Counters of this backend's work since the previous call (requests, retries, tokens),
        reset by the call, for the behave summary; empty for engines whose trial logs already
        say everything."""
        return {}

    def render(self, messages: list[dict]) -> str:
        """The exact prompt string for chat `messages`, assistant turn opened."""
        raise NotImplementedError

    def generate(self, requests: Sequence[GenRequest]) -> list[GenResult]:
        """Answer every request, results in request order."""
        raise NotImplementedError

    def score(self, requests: Sequence[ScoreRequest]) -> list[ScoreResult]:
        """Log-probabilities of each request's continuations, results in request order."""
        raise NotImplementedError(f"backend '{self.name}' cannot score continuations")

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


def continuation_ids(tok, req: ScoreRequest) -> tuple[list[int], list[list[int]]]:
    """Token ids of a score request's prompt and of each continuation after it.

    Each continuation is tokenized as part of the whole text (prompt + continuation), the way
    the model would read the answer, and its ids are what follows the prompt's own ids; with
    `end_of_turn` the tokenizer's end-of-sequence id follows. Tokenizing the whole text keeps
    word boundaries exact: " car," and " cart," become different token sequences even where
    " car" alone is a prefix of " cart".

    Args:
        tok: a Hugging Face tokenizer (special tokens added as by default, as `generate` does).
        req: the request.

    Returns:
        (prompt ids, continuation ids per continuation).

    Raises:
        PipelineError: the tokenizer merges the end of the prompt with a continuation, so the
            continuation would not be scored after the same prompt tokens.
    """
    prompt = tok(req.text)["input_ids"]
    eos = [tok.eos_token_id] if req.end_of_turn else []
    out = []
    for cont in req.continuations:
        full = tok(req.text + cont)["input_ids"]
        if full[:len(prompt)] != prompt or len(full) == len(prompt):
            raise PipelineError(f"the tokenizer of this model merges the end of the prompt "
                                f"({req.text[-20:]!r}) with the continuation {cont!r}, so it cannot be scored "
                                f"after the same prompt tokens; score it with another model, or report the "
                                f"tokenizer and the word")
        out.append(full[len(prompt):] + eos)
    return prompt, out

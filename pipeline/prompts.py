"""Prompt templates of the paper, rendered byte for byte.

The templates live in `prompts/*.txt` (one per paradigm or hidden-state strategy) so that
a reader can see the exact text without reading code, and so the manifest can record
their hashes. Each file stores the prompt followed by exactly one newline, which
`_template` removes: the FC prompt ends in ``output: `` with a trailing space and the
task-FC prompt ends in a newline of its own, and both must survive unchanged.
Placeholders are ``{name}`` fields filled with `str.format`, so braces inside a word or a
model's bad output are inserted literally.
"""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path

from .errors import PipelineError
from .store import sha256_file

PROMPTS_DIR = Path(__file__).resolve().parents[1] / "prompts"
TEMPLATES = ("fc", "fc_repair", "fa", "hidden_meaning", "hidden_task_fc", "hidden_task_fa")
HIDDEN_TEMPLATES = {"meaning": "hidden_meaning", "task_fc": "hidden_task_fc", "task_fa": "hidden_task_fa"}


@functools.cache
def _template(name: str) -> str:
    path = PROMPTS_DIR / f"{name}.txt"
    try:
        text = path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise PipelineError(f"{path}: prompt template missing; restore it from git "
                            f"(git checkout -- {path.relative_to(PROMPTS_DIR.parent)})") from None
    if not text.endswith("\n"):
        raise PipelineError(f"{path}: a prompt file must end with exactly one newline after the "
                            f"prompt text (see prompts/README.md); restore it from git")
    return text[:-1]


def fc_prompt(cue: str, candidates: list[str], n_picks: int = 2) -> str:
    """Forced-choice user message (METHOD.md §2).

    Args:
        cue: the input word.
        candidates: this trial's candidates in plan order; joined with ", " inside [ ].
        n_picks: how many words the model must choose (the paper: 2).

    Returns:
        The user-message text, ending in ``output: `` (trailing space).
    """
    return _template("fc").format(n_picks=n_picks, cue=cue, candidates=", ".join(candidates))


def fc_repair_prompt(cue: str, candidates: list[str], bad_output: str | None, n_picks: int = 2) -> str:
    """Repair prompt re-asking a non-compliant FC trial, quoting the bad answer.

    The authors strip the quoted answer (`str(bad).strip()`, `None` -> empty), so this does
    too: the repair text then matches theirs for any raw model output.

    Args:
        cue: the input word.
        candidates: the same candidates as the failed trial.
        bad_output: the model's latest invalid output.
        n_picks: how many words the model must choose.

    Returns:
        The repair user-message text, ending in ``output: ``.
    """
    bad = "" if bad_output is None else str(bad_output).strip()
    return _template("fc_repair").format(n_picks=n_picks, cue=cue, candidates=", ".join(candidates),
                                         bad_output=bad)


def fa_prompt(cue: str) -> str:
    """Free-association user message, ending ``input: {cue}.\\n output: `` (METHOD.md §3)."""
    return _template("fa").format(cue=cue)


def hidden_prompt(strategy: str, word: str) -> str:
    """Raw text (no chat template) whose hidden states represent `word` (METHOD.md §4).

    Args:
        strategy: ``meaning``, ``task_fc`` or ``task_fa``. ``averaged`` reads corpus
            sentences instead of a template and is not handled here.
        word: the vocabulary word.

    Returns:
        The prompt; `word` occurs last in it, where the hidden stage pools its tokens.

    Raises:
        ValueError: unknown strategy.
    """
    if strategy not in HIDDEN_TEMPLATES:
        raise ValueError(f"no prompt template for hidden strategy '{strategy}'; templates exist for "
                         f"{', '.join(HIDDEN_TEMPLATES)} ('averaged' uses corpus sentences)")
    return _template(HIDDEN_TEMPLATES[strategy]).format(w=word)


def chat_messages(text: str, system_prompt: str | None = None) -> list[dict]:
    """Chat message list for one user turn, with an optional system message first.

    The paper sends a system message only to rnj-1 (``models[].system_prompt``); without one,
    the tokenizer's chat template decides (SmolLM2's inserts its default system message).
    """
    msgs = [{"role": "system", "content": system_prompt}] if system_prompt is not None else []
    msgs.append({"role": "user", "content": text})
    return msgs


def render_chat(tokenizer, messages: list[dict]) -> str:
    """The string the model sees: chat template applied, assistant turn opened."""
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def prompt_sha(text: str) -> str:
    """SHA-256 hex of a rendered prompt, stored with every trial log row."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def template(name: str) -> str:
    """The text of `prompts/<name>.txt` (checked as every template is), for paradigms that bring
    their own prompts (`paradigms`); fill it with `str.format`."""
    return _template(name)


def template_sha(name: str) -> str:
    """SHA-256 of `prompts/<name>.txt`, for the fingerprint of the logs it prompts."""
    _template(name)
    return sha256_file(PROMPTS_DIR / f"{name}.txt")


def prompt_hashes() -> dict[str, str]:
    """SHA-256 of each template file, recorded in the manifest so edited prompts are visible."""
    out = {}
    for name in TEMPLATES:
        path = PROMPTS_DIR / f"{name}.txt"
        if not path.exists():
            _template(name)
        out[name] = sha256_file(path)
    return out

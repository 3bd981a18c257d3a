"""Parsing and validation of model answers, as the paper's scripts do it (METHOD.md §2-§3).

The paper's rules decide which picks count; this module adds one `status` code per answer so
that non-compliance can be counted by kind instead of silently dropped. One rule depends on
the run's `rules.Rules`: what an FC pick may look like. Paper mode takes the authors'
``[A-Za-z]+``; the default takes letters of any script with inner hyphens or apostrophes
and compares NFC-normalized strings, so vocabularies of other languages (``café``, ``zoë``,
``e-mail``, ``o'clock``) can be answered at all; digits only inside a trial's candidate that
has them (``mp3``), so an echoed format line ``output: word1, word2`` is no answer in either
mode. On ASCII answers without inner ``-`` or ``'`` both rules give the same picks.

FC status precedence (the first that applies wins):
    ``empty`` (blank output) > ``unparseable`` (no ``output: a, b`` match and no comma line)
    > ``wrong_count`` (a refinement of unparseable: the answer is a single word) > ``cue_repeat``
    (a pick is the cue) > ``not_in_list`` (a pick is not one of the trial's candidates)
    > ``duplicate`` (both picks identical) > ``ok``.
    ``ok`` is exactly the paper's "compliant": both picks valid and distinct.

FA status precedence:
    ``empty`` > ``unparseable`` (no associate survives cleaning) > ``wrong_count`` (fewer than
    k associates) > ``cue_repeat`` (an associate equals the cue) > ``duplicate`` (an associate
    repeats within the answer) > ``ok``.
    More than k associates is not an error: the paper keeps the first k. The paper's "full
    compliance" (k associates) is ``status != wrong_count`` among parseable answers.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field

from .rules import Rules

STATUSES = ("ok", "wrong_count", "not_in_list", "cue_repeat", "duplicate", "unparseable", "empty")

_FA_LIST = re.compile(r"output\s*:(.*?)(?:\.|\n|$)", re.IGNORECASE | re.DOTALL)
_EDGE_NONWORD = re.compile(r"^[^\w]+|[^\w]+$")
_LABEL = re.compile(r"^\s*output\s*:", re.IGNORECASE)
_DEFAULT_RULES = Rules()


@functools.lru_cache(maxsize=4096)
def _fc_patterns(word: str) -> tuple[re.Pattern, re.Pattern]:
    return (re.compile(rf"output:\s*({word})\s*,\s*({word})", re.IGNORECASE),
            re.compile(rf"^[^\w]*({word})[^\w]*$"))


@dataclass
class Parsed:
    """One parsed answer.

    Attributes:
        picks: FC: the valid picks only (0-2, in answer order, duplicates removed); FA: the
            cleaned associates, at most k, cue repeats and duplicates included (aggregation
            drops cue repeats, as the paper does).
        raw: the strings extracted before validation (FC: the two extracted words; FA: the
            comma-separated parts before cleaning).
        status: one of `STATUSES` (see the module docstring for precedence).
    """
    picks: list[str] = field(default_factory=list)
    raw: list[str] = field(default_factory=list)
    status: str = "ok"


def _fc_extract(text: str, cue: str, pair: re.Pattern) -> list[str] | None:
    if cue.strip():
        text = re.sub(rf"^\s*{re.escape(cue.strip())}\s*:\s*", "output: ", text, flags=re.IGNORECASE)
    matches = pair.findall(text)
    if matches:
        return list(matches[-1])
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    for line in reversed(lines):
        if "," in line and ":" not in line:
            parts = [p.strip() for p in line.split(",") if p.strip()]
            if len(parts) >= 2:
                return parts[:2]
    return None


def parse_fc(output: str | None, cue: str, candidates: list[str], n_picks: int = 2,
             rules: Rules | None = None) -> Parsed:
    """Extract and validate the picks of one forced-choice answer.

    Follows `extract_picks` and `validate_picks` of the paper's `forced_choice_<model>.py`:
    strip; replace a leading ``<cue>:`` with ``output: ``; take the LAST case-insensitive
    match of ``output:\\s*(W)\\s*,\\s*(W)`` with W the rule's pick pattern (paper:
    ``[A-Za-z]+``; default: `Rules.fc_pick`); else the last line with a comma and no colon (its first two
    comma-separated parts). A pick is valid only if, after strip, it equals (case-sensitively;
    NFC-normalized by default) one of the trial's candidates and is not the cue; an identical
    second pick is dropped. Valid picks are returned as the candidate strings themselves.

    Args:
        output: the model's raw answer (None counts as empty).
        cue: the trial's input word.
        candidates: the trial's candidates.
        n_picks: picks asked for. The paper's extraction is defined for 2; other values are
            rejected rather than silently parsed with the 2-pick rules.
        rules: the run's rules (default: the project's default rules).

    Returns:
        `Parsed` with the valid picks, the extracted strings and the status.
    """
    if n_picks != 2:
        raise ValueError(f"parse_fc implements the paper's 2-pick rules; n_picks={n_picks} is not supported")
    rules = rules or _DEFAULT_RULES
    if output is None or not output.strip():
        return Parsed(status="empty")
    text = rules.normalize(output.strip())
    cue_n = rules.normalize(cue)
    eligible = {rules.normalize(c.strip()): c.strip() for c in candidates if isinstance(c, str) and c.strip()}
    eligible.pop(cue_n, None)
    pair, one_word = _fc_patterns(rules.fc_pick(eligible))
    raw = _fc_extract(text, cue_n, pair)
    if raw is None:
        bare = _LABEL.sub("", text, count=1).strip()
        return Parsed(status="wrong_count" if one_word.match(bare) else "unparseable")
    raw = [p.strip() for p in raw]
    picks: list[str] = []
    status = "ok"
    for p in raw:
        if p in eligible:
            if eligible[p] in picks:
                status = "duplicate" if status == "ok" else status
            else:
                picks.append(eligible[p])
        elif p.lower() == cue_n.lower():
            status = "cue_repeat"
        elif status in ("ok", "duplicate"):
            status = "not_in_list"
    return Parsed(picks=picks, raw=raw, status=status)


def parse_fa(output: str | None, cue: str, k: int = 5) -> Parsed:
    """Extract the associates of one free-association answer.

    Follows `extract_associations` of the paper's `01_postprocess_fa_all.py`: the text after
    the first ``output:`` up to the first period or newline (else the first non-empty line);
    strip a trailing period; split on commas; lowercase; strip leading and trailing non-word
    characters; drop empties; keep the first k. Nothing is lemmatised or checked against
    the vocabulary.

    Args:
        output: the model's raw answer (None counts as empty).
        cue: the trial's input word (lowercased for the cue-repeat check, as the paper does).
        k: associates asked for.

    Returns:
        `Parsed` with up to k associates (cue repeats included), the raw parts and the status.
    """
    if output is None or not output.strip():
        return Parsed(status="empty")
    m = _FA_LIST.search(output)
    if m:
        content = m.group(1).strip()
    else:
        lines = [ln.strip() for ln in output.split("\n") if ln.strip()]
        content = lines[0] if lines else ""
    raw = [w.strip() for w in content.rstrip(".").split(",")]
    words = [w for w in (_EDGE_NONWORD.sub("", r.lower()) for r in raw) if w][:k]
    cue_l = str(cue).lower()
    if not words:
        status = "unparseable"
    elif len(words) < k:
        status = "wrong_count"
    elif cue_l in words:
        status = "cue_repeat"
    elif len(set(words)) < len(words):
        status = "duplicate"
    else:
        status = "ok"
    return Parsed(picks=words, raw=[r for r in raw if r], status=status)

"""The rules where the project's default and the authors' code differ, in one place.

`experiment.paper_mode = true` switches every rule below to the authors' own (their public
code, commit 4dccc88, METHOD.md); the default is the project's rule where it is the better
one. Each difference, with the reason the default differs, is in the README table "Paper
mode vs default"; stages ask a `Rules` object instead of testing the switch themselves, and
the active rule set is part of every fingerprint it affects. The rules: the FC pick pattern
(`fc_word`, `fc_pick`, `normalize`), the NA strings dropped from responses and whole FA answers
(`na_strings`, `missing_answers`), rows of cues without a valid response (aggregate), the
RSA word set (`common_words`), hidden-state word
location (`locate`, `pool_zero_width`, `sink_guard`), the averaged fallback (`averaged_fallback`),
sentence matching and splitting (`sentence_tokens`, `sentence_splitter`,
`dedupe_sentences`), static-vector lookup (baselines) and missing static
vectors in the regression (`regress_missing_static`).
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

from .paradigms import find as find_paradigm

PANDAS_NA_STRINGS = frozenset([
    "", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND", "1.#QNAN", "<NA>",
    "N/A", "NA", "NULL", "NaN", "None", "n/a", "nan", "null"])
"""pandas' default NA strings (pandas >= 2.0, `pandas._libs.parsers.STR_NA_VALUES`), matched
case-sensitively: the authors wrote picks and associations to CSV and read them back with
`read_csv` defaults, so these strings became missing values (METHOD.md §2 "Clean")."""

DROPPED_AFTER_LOWER = frozenset(["", "na", "nan"])
"""Strings the authors drop explicitly after lowercasing and stripping (both modes)."""

_ALNUM = r"[^\W_]"
UNICODE_WORD = rf"{_ALNUM}+(?:['’\-]{_ALNUM}+)*"
"""A word: letters (or digits) of any script, joined by inner hyphens or apostrophes
(``o'clock``, ``e-mail``, ``mp3``)."""
_LETTER = r"[^\W\d_]"
LETTER_WORD = rf"{_LETTER}+(?:['’\-]{_LETTER}+)*"
"""`UNICODE_WORD` without digits: on ASCII text without inner ``-``/``'`` exactly the
authors' ``[A-Za-z]+``, so an echoed format line (``output: word1, word2``) is no answer."""
ASCII_WORD = r"[A-Za-z]+"
"""The authors' FC pick pattern (`extract_picks`: ``output:\\s*([A-Za-z]+)\\s*,\\s*([A-Za-z]+)``)."""

_PAPER_TOKEN_SPLIT = re.compile(r"[^a-z0-9]+")
_UNICODE_TOKEN_SPLIT = re.compile(r"[\W_]+")
_JOINED_TOKEN = re.compile(r"[^\W_]+(?:['’\-][^\W_]+)+")


@dataclass(frozen=True)
class Rules:
    """The active rule set of a run (`Rules.of(cfg)`)."""

    paper: bool = False

    @classmethod
    def of(cls, cfg) -> "Rules":
        return cls(paper=bool(cfg.experiment.paper_mode))

    @property
    def name(self) -> str:
        """Recorded in fingerprints and manifests: ``paper`` or ``default``."""
        return "paper" if self.paper else "default"

    # ------------------------------------------------------------ words and parsing

    @property
    def fc_word(self) -> str:
        """Regex of a word an FC answer can name (the vocabulary check, `unmatchable`)."""
        return ASCII_WORD if self.paper else UNICODE_WORD

    def fc_pick(self, candidates=()) -> str:
        """Regex of one FC pick in the ``output: a, b`` pattern of a trial.

        Paper mode: ``[A-Za-z]+``. Default: letters of any script with inner hyphens or
        apostrophes (`LETTER_WORD`), or literally one of the trial's `candidates` that hold
        digits (``mp3``). Digits count only inside such a candidate, so on ASCII answers
        without inner ``-``/``'`` both modes extract the same picks.
        """
        if self.paper:
            return ASCII_WORD
        digits = sorted({c for c in candidates if any(ch.isdigit() for ch in c)}, key=lambda c: (-len(c), c))
        return "|".join([*(re.escape(c) for c in digits), LETTER_WORD]) if digits else LETTER_WORD

    def normalize(self, text: str) -> str:
        """NFC in default mode (a model may compose accents the vocabulary decomposes);
        unchanged in paper mode, as the authors compared raw strings."""
        return text if self.paper else unicodedata.normalize("NFC", text)

    def unmatchable(self, words: list[str]) -> list[str]:
        """Words an FC answer can never name under the active pick pattern."""
        pat = re.compile(self.fc_word)
        return [w for w in words if not pat.fullmatch(self.normalize(w))]

    def word_hint(self) -> str:
        if self.paper:
            return ("paper mode parses FC picks with the authors' rule [A-Za-z]+ (ASCII letters only); "
                    "remove these words or set experiment.paper_mode = false")
        return ("an FC pick must be letters or digits (any script), optionally joined by inner hyphens or "
                "apostrophes; remove or respell these words (spaces and other symbols cannot be matched)")

    # ------------------------------------------------------------ aggregation

    def missing_answers(self, paradigm: str, outputs):
        """Which whole answers count as no answer at all, before parsing (`counts.Counter`).

        Paper mode, FA: an answer that is, after strip, exactly one of pandas' NA strings
        (``None``, ``#N/A N/A``, ``-1.#IND``, ``1.#QNAN``, ...), since the authors' raw FA
        answers went through a CSV read with `read_csv` defaults; its associates (``none``,
        ``n/a n/a``, ...) are not counted. FC picks were parsed before any CSV, so FC answers
        are never missing by this rule. A null answer is missing in both modes.

        Args:
            paradigm: the log's paradigm.
            outputs: pyarrow string array of raw answers.

        Returns:
            pyarrow boolean array, True where the answer is missing.
        """
        import pyarrow as pa
        import pyarrow.compute as pc

        missing = pc.is_null(outputs)
        par = find_paradigm(paradigm)
        if self.paper and par is not None and par.na_answers:
            stripped = pc.utf8_trim_whitespace(outputs)
            na = pc.is_in(stripped, value_set=pa.array(self.na_strings, pa.string()))
            missing = pc.or_(missing, pc.fill_null(na, False))
        return missing

    @property
    def na_strings(self) -> list[str]:
        """Strings dropped as missing, as stored (besides the lowercase ``DROPPED_AFTER_LOWER``):
        each response (FC picks, FA associates) and, in FA, each whole raw answer."""
        return sorted(PANDAS_NA_STRINGS) if self.paper else []

    # ------------------------------------------------------------ hidden states

    def locate(self, text: str, word: str) -> tuple[int, int] | None:
        """Character span of the occurrence of `word` whose tokens represent it.

        Default: the last case-insensitive match not preceded or followed by a letter or
        digit (any script). Paper: ``text.rfind(word)``, case-sensitive and without word
        boundaries (it can land inside a longer word, e.g. "art" in "start").
        """
        if self.paper:
            start = text.rfind(word)
            return None if start < 0 else (start, start + len(word))
        last = None
        pattern = rf"(?<!{_ALNUM}){re.escape(word)}(?!{_ALNUM})"
        for m in re.finditer(pattern, text, re.IGNORECASE):
            last = m
        return None if last is None else (last.start(), last.end())

    @property
    def pool_zero_width(self) -> bool:
        """Whether tokens with an empty character span take part in pooling (paper: yes)."""
        return self.paper

    def sentence_tokens(self, sentence: str) -> set[str]:
        """Tokens a sentence is matched to words by (harvesting, METHOD.md §1 step 8).

        Paper: lowercase, split on ``[^a-z0-9]+``. Default: the same split on any non-letter,
        non-digit character of any script, plus the hyphen/apostrophe-joined forms, so
        ``café`` and ``e-mail`` can be matched; on ASCII text without such joins both agree.
        """
        low = sentence.lower()
        if self.paper:
            return set(_PAPER_TOKEN_SPLIT.split(low))
        tokens = set(_UNICODE_TOKEN_SPLIT.split(low))
        if "-" in low or "'" in low or "’" in low:
            tokens.update(_JOINED_TOKEN.findall(low))
        return tokens

    @property
    def sentence_splitter(self) -> str:
        """How harvesting splits a document into sentences: ``punkt`` (NLTK's English Punkt
        model, as the authors did) or ``regex`` (after ``. ! ?`` before a capital or digit;
        no model data needed, but blind to abbreviations such as "Dr. Smith")."""
        return "punkt" if self.paper else "regex"

    @property
    def dedupe_sentences(self) -> bool:
        """Whether harvesting counts a sentence repeated in the corpus once per word (default)
        or every time, as the authors' scan did (C4 repeats boilerplate across pages)."""
        return not self.paper

    def sink_guard(self, configured: str) -> str:
        """The `hidden.sink_guard` in force: the configured one, ``none`` in paper mode (the
        authors fed the raw text, so a text starting with the word pools position 0)."""
        return "none" if self.paper else configured

    @property
    def averaged_fallback(self) -> str:
        """Text of a word without sentences (averaged strategy): ``word`` or ``meaning``."""
        return "word" if self.paper else "meaning"

    # ------------------------------------------------------------ analysis

    @property
    def common_words(self) -> bool:
        """RSA over the words valid in hidden, FC and FA at once (paper) or per reference."""
        return self.paper

    @property
    def regress_missing_static(self) -> str:
        """``zero`` (paper: a missing vector is a zero vector) or ``drop`` (its pairs are dropped)."""
        return "zero" if self.paper else "drop"

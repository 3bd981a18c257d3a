"""rules: the one place where paper mode and the default differ."""

from __future__ import annotations

import pytest

from pipeline.config import from_dict
from pipeline.rules import DROPPED_AFTER_LOWER, PANDAS_NA_STRINGS, Rules

PAPER, DEFAULT = Rules(paper=True), Rules()


def test_of_reads_the_one_switch():
    raw = {"experiment": {"name": "x", "paper_mode": True}}
    assert Rules.of(from_dict(raw)).paper and Rules.of(from_dict(raw)).name == "paper"
    assert Rules.of(from_dict({"experiment": {"name": "x"}})).name == "default"


def test_na_strings_are_pandas_defaults():
    from pandas._libs.parsers import STR_NA_VALUES

    assert PANDAS_NA_STRINGS == frozenset(STR_NA_VALUES)
    assert DROPPED_AFTER_LOWER == {"", "na", "nan"}
    assert PAPER.na_strings == sorted(PANDAS_NA_STRINGS) and DEFAULT.na_strings == []


def test_whole_fa_answers_pandas_reads_as_missing():
    """METHOD.md §2 "Clean": the raw FA answers went through a CSV read with pandas' defaults, so
    an answer that is, after strip, exactly one of its NA strings is no answer at all (FA only:
    FC picks were parsed before the CSV)."""
    import pyarrow as pa

    answers = pa.array(["None", " #N/A N/A\n", "-1.#IND", "1.#QNAN", "output: none, null.", "none", "",
                        None, "NA", "null dog"])
    assert PAPER.missing_answers("fa", answers).tolist() == [True, True, True, True, False, False, True,
                                                             True, True, False]
    assert DEFAULT.missing_answers("fa", answers).tolist() == [False] * 7 + [True, False, False]
    assert not PAPER.missing_answers("fc", answers).to_numpy(zero_copy_only=False)[:7].any()


@pytest.mark.parametrize("words, default_bad, paper_bad", [
    (["dog", "cat"], [], []),
    (["café", "zoë", "e-mail", "o'clock", "東京", "mp3"], [], ["café", "zoë", "e-mail", "o'clock", "東京", "mp3"]),
    (["c++", "a.b", "-dash", "end-", "x_y"], ["c++", "a.b", "-dash", "end-", "x_y"], ["c++", "a.b", "-dash", "end-", "x_y"]),
])
def test_unmatchable_words(words, default_bad, paper_bad):
    assert DEFAULT.unmatchable(words) == default_bad
    assert PAPER.unmatchable(words) == paper_bad


def test_sentence_tokens_agree_on_ascii_and_extend_to_other_scripts():
    s = "The dog's e-mail, sent at 5 o'clock: café-au-lait!"
    assert PAPER.sentence_tokens(s) - {"caf"} <= DEFAULT.sentence_tokens(s)
    assert {"e-mail", "o'clock", "café", "café-au-lait"} <= DEFAULT.sentence_tokens(s)
    assert "café" not in PAPER.sentence_tokens(s) and "caf" in PAPER.sentence_tokens(s)
    plain = "A cat and a dog (in 3 gardens) met."
    assert PAPER.sentence_tokens(plain) == DEFAULT.sentence_tokens(plain)


def test_paper_switches_every_listed_rule():
    assert (PAPER.averaged_fallback, DEFAULT.averaged_fallback) == ("word", "meaning")
    assert PAPER.common_words and not DEFAULT.common_words
    assert PAPER.pool_zero_width and not DEFAULT.pool_zero_width
    assert (PAPER.regress_missing_static, DEFAULT.regress_missing_static) == ("zero", "drop")
    assert PAPER.locate("Start the art", "art") == (10, 13) and PAPER.locate("the start", "art") == (6, 9)
    assert DEFAULT.locate("the start", "art") is None

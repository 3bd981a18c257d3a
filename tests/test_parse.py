"""Answer parsing: the paper's extraction rules, the status codes and garbage robustness."""

from __future__ import annotations

import random
import re

import pytest

from pipeline.parse import STATUSES, parse_fa, parse_fc
from pipeline.rules import Rules

PAPER = Rules(paper=True)

CANDS = ["banana", "violin", "therapy", "beer", "tango", "paper", "cat", "kiwi", "jeans", "car",
         "vacation", "note", "leash", "bath", "ceiling", "ivy"]


def _paper_fc(output, cue, candidates):
    """The paper's extract_picks + validate_picks, transcribed (pd.NA -> None)."""
    if not isinstance(output, str) or not output.strip():
        return None, None
    text = output.strip()
    text = re.sub(rf"^\s*{re.escape(cue.strip())}\s*:\s*", "output: ", text, flags=re.IGNORECASE)
    m = re.findall(r"output:\s*([A-Za-z]+)\s*,\s*([A-Za-z]+)", text, flags=re.IGNORECASE)
    p1 = p2 = None
    if m:
        p1, p2 = m[-1]
    else:
        for line in reversed([ln.strip() for ln in text.splitlines() if ln.strip()]):
            if "," in line and ":" not in line:
                parts = [p.strip() for p in line.split(",") if p.strip()]
                if len(parts) >= 2:
                    p1, p2 = parts[0], parts[1]
                    break
    eligible = {c.strip() for c in candidates if c.strip()} - {cue}
    v1 = p1.strip() if isinstance(p1, str) and p1.strip() in eligible else None
    v2 = p2.strip() if isinstance(p2, str) and p2.strip() in eligible else None
    if v1 is not None and v1 == v2:
        v2 = None
    return v1, v2


@pytest.mark.parametrize("output, picks, status", [
    ("output: cat, leash", ["cat", "leash"], "ok"),
    ("cat, leash", ["cat", "leash"], "ok"),
    ("  Output:cat ,leash\n", ["cat", "leash"], "ok"),
    ("dog: cat, leash", ["cat", "leash"], "ok"),            # "<cue>:" prefix fix
    ("DOG: cat, leash", ["cat", "leash"], "ok"),
    ("output: beer, tango\noutput: cat, leash", ["cat", "leash"], "ok"),  # last match wins
    ("Sure!\ncat, leash\nHope this helps", ["cat", "leash"], "ok"),
    ("output: cat, cat", ["cat"], "duplicate"),
    ("output: Cat, leash", ["leash"], "not_in_list"),       # case-sensitive
    ("output: cat, zebra", ["cat"], "not_in_list"),
    ("output: dog, cat", ["cat"], "cue_repeat"),
    ("output: zebra, dog", [], "cue_repeat"),               # cue beats not_in_list
    ("output: **cat**, **leash**", [], "unparseable"),      # primary needs letters; fallback refuses colons
    ("**cat**, **leash**", [], "not_in_list"),
    ("", [], "empty"),
    ("   \n\t", [], "empty"),
    (None, [], "empty"),
    ("output: cat", [], "wrong_count"),
    ("cat", [], "wrong_count"),
    ("I cannot answer that.", [], "unparseable"),
    ("output:", [], "unparseable"),
    ("output: cat, leash, note", ["cat", "leash"], "ok"),
])
def test_parse_fc_cases(output, picks, status):
    p = parse_fc(output, "dog", CANDS)
    assert p.picks == picks
    assert p.status == status
    v1, v2 = _paper_fc(output, "dog", CANDS)
    assert p.picks == [v for v in (v1, v2) if v is not None]
    assert (p.status == "ok") == (v1 is not None and v2 is not None)


@pytest.mark.parametrize("output, cands, picks, status", [
    ("output: café, thé", ["café", "thé", "eau"], ["café", "thé"], "ok"),
    ("output: cafe\u0301, the\u0301", ["café", "thé", "eau"], ["café", "thé"], "ok"),  # NFD answer
    ("output: e-mail, o'clock", ["e-mail", "o'clock", "fax"], ["e-mail", "o'clock"], "ok"),
    ("output: zoë, Zoë", ["zoë", "anna"], ["zoë"], "not_in_list"),
    ("output: 東京, 大阪", ["東京", "大阪", "京都"], ["東京", "大阪"], "ok"),
    ("output: москва, киев", ["москва", "киев"], ["москва", "киев"], "ok"),
    ("output: mp3, cd", ["mp3", "cd", "tape"], ["mp3", "cd"], "ok"),
])
def test_parse_fc_unicode_words_by_default(output, cands, picks, status):
    p = parse_fc(output, "x", cands)
    assert (p.picks, p.status) == (picks, status)


def test_parse_fc_paper_mode_keeps_the_ascii_rule():
    assert parse_fc("output: café, thé", "x", ["café", "thé"], rules=PAPER).status == "unparseable"
    assert parse_fc("output: e-mail, fax", "x", ["e-mail", "fax"], rules=PAPER).picks == []
    assert parse_fc("output: cat's, leash", "dog", CANDS, rules=PAPER).picks == []
    assert parse_fc("output: cat's, leash", "dog", CANDS).picks == ["leash"]


def test_parse_fc_markdown_fallback_line():
    # "**output:** cat, leash" has a colon; the primary regex needs "output:" + spaces + word.
    p = parse_fc("**output:** cat, leash", "dog", CANDS)
    assert p.picks == [] and p.status == "unparseable"
    p = parse_fc("output: cat, leash.", "dog", CANDS)
    assert p.picks == ["cat", "leash"] and p.raw == ["cat", "leash"]


def test_parse_fc_prompt_echo_takes_last_answer():
    echo = ("Example:\ninput word: dog\ncandidates: [banana, violin]\noutput: cat, leash\n\n"
            "input word: river\ncandidates: [boat, bank]\noutput: boat, bank")
    p = parse_fc(echo, "river", ["boat", "bank", "fish"])
    assert p.picks == ["boat", "bank"] and p.status == "ok"


ASCII_ANSWERS = [
    "output: cat, leash\nUse the format: output: word1, word2",  # the prompt's format line echoed
    "output: cat, leash\noutput: word1, word2\n",
    "output: word1, word2",
    "output: cat, leash2", "output: cat2, leash", "output: cat, 2leash", "output: 1, 2", "output: cat 3, leash",
    "output: cat, leash\noutput: beer, zebra",                    # the last match wins, candidates or not
    "output: beer, tango\noutput: cat, leash",
    "cat, leash", "dog: cat, leash", "DOG:cat,leash", "output:cat,leash,note", "output: cat_x, leash",
    "output: cat, leash_2", "output: Cat, leash", "output: cat, cat", "output: dog, cat", "output: cat",
    "Answer 1: output: cat, leash", "output: cat,\nleash", "output: cat , leash.", "cat2, leash3",
    "output: **cat**, leash", "the answer is (cat, leash)", "", "output:", "42",
]


@pytest.mark.parametrize("output", ASCII_ANSWERS)
def test_paper_and_default_give_the_same_picks_on_ascii_answers(output):
    default, paper = parse_fc(output, "dog", CANDS), parse_fc(output, "dog", CANDS, rules=PAPER)
    v1, v2 = _paper_fc(output, "dog", CANDS)
    assert paper.picks == [v for v in (v1, v2) if v is not None]
    assert (default.picks, default.status) == (paper.picks, paper.status)


def test_parse_fc_echoed_format_line_is_not_the_answer():
    text = "output: cat, leash\nUse the format: output: word1, word2"
    assert parse_fc(text, "dog", CANDS).picks == ["cat", "leash"] and parse_fc(text, "dog", CANDS).status == "ok"
    digits = ["mp3", "cd", "tape", "word1"]  # a candidate with digits is still a pick by default
    assert parse_fc("output: mp3, cd\nformat: output: word1, word2", "x", digits).picks == ["word1"]
    assert parse_fc("output: mp3, cd", "x", digits).picks == ["mp3", "cd"]
    assert parse_fc("output: mp3x, cd", "x", digits).status == "unparseable"


def test_parse_fc_rejects_other_pick_counts():
    with pytest.raises(ValueError, match="2-pick"):
        parse_fc("output: cat, leash, note", "dog", CANDS, n_picks=3)


@pytest.mark.parametrize("output, words, status", [
    ("output: bark, leash, pet, animal, cat.", ["bark", "leash", "pet", "animal", "cat"], "ok"),
    ("Output: Bark, LEASH, pet, animal, cat", ["bark", "leash", "pet", "animal", "cat"], "ok"),
    (" output: bark, leash, pet, animal, cat, bone, walk.", ["bark", "leash", "pet", "animal", "cat"], "ok"),
    ("output: bark, leash.", ["bark", "leash"], "wrong_count"),
    ("output: bark, dog, pet, animal, cat.", ["bark", "dog", "pet", "animal", "cat"], "cue_repeat"),
    ("output: bark, pet, pet, animal, cat.", ["bark", "pet", "pet", "animal", "cat"], "duplicate"),
    ("bark, leash, pet, animal, cat\nmore text", ["bark", "leash", "pet", "animal", "cat"], "ok"),
    ("output: *bark*, (leash), pet!, \"animal\", cat-toy.", ["bark", "leash", "pet", "animal", "cat-toy"], "ok"),
    ("output: ice cream, leash, pet, animal, cat.", ["ice cream", "leash", "pet", "animal", "cat"], "ok"),
    ("output: ...", [], "unparseable"),
    ("", [], "empty"),
    (None, [], "empty"),
    ("output: bark, leash\npet, animal, cat", ["bark", "leash"], "wrong_count"),  # stops at newline
])
def test_parse_fa_cases(output, words, status):
    p = parse_fa(output, "Dog")
    assert p.picks == words
    assert p.status == status


def test_parse_fa_period_ends_the_list():
    # The paper's regex stops at the first period, even inside the list.
    assert parse_fa("output: st. louis, leash", "dog").picks == ["st"]


def _garbage(rng: random.Random) -> str:
    pieces = ["output:", "Output :", "dog:", ",", ", ", ".", "\n", "**", "cat", "leash", "Cat", "dog",
              "ÿ", "日本", "🙂", " ", "\t", "[", "]", "banana", "zebra", "input word:", "candidates:",
              "output: cat, leash", "\u200b", "'", '"', "-", "...", "1", "word2", "output: word1, word2"]
    n = rng.choice([0, 1, 2, 5, 20, 200])
    return "".join(rng.choice(pieces) if rng.random() < 0.8 else chr(rng.randrange(1, 0x2FFF))
                   for _ in range(n))


def test_parse_never_raises_and_is_consistent_on_garbage():
    rng = random.Random(0)
    joined = re.compile(r"[^\W_]['’-][^\W_]")
    for _ in range(3000):
        text = _garbage(rng)
        paper = parse_fc(text, "dog", CANDS, rules=PAPER)
        v1, v2 = _paper_fc(text, "dog", CANDS)
        assert paper.picks == [v for v in (v1, v2) if v is not None], text
        p = parse_fc(text, "dog", CANDS)
        for q in (p, paper):
            assert q.status in STATUSES
            assert len(q.picks) <= 2 and len(set(q.picks)) == len(q.picks)
            assert all(x in CANDS and x != "dog" for x in q.picks)
            assert (q.status == "ok") == (len(q.picks) == 2)
        if text.isascii() and not joined.search(text):
            assert p.picks == paper.picks, text
        f = parse_fa(text, "dog")
        assert f.status in STATUSES and len(f.picks) <= 5
        assert all(w and w == w.lower() for w in f.picks)
        assert (f.status == "ok") == (len(f.picks) == 5 and "dog" not in f.picks
                                      and len(set(f.picks)) == 5)


def test_parse_very_long_output():
    text = "blah " * 20000 + "\noutput: cat, leash"
    assert parse_fc(text, "dog", CANDS).picks == ["cat", "leash"]
    assert parse_fa("output: " + "a, " * 10000, "dog").picks == ["a"] * 5

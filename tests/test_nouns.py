"""The noun list builder (`pipeline.nouns`): WordNet part-of-speech rules, exclusions, and the
committed `vocab/nouns-5000.txt` following them."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from pipeline import nouns
from pipeline.vocab import load_words

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wn():
    return nouns._wordnet()


def test_pos_profile_majority_rule(wn):
    right = nouns.pos_profile(wn, "right")
    assert right.counts["noun"] == 82 and right.counts["adj"] == 69 and right.counts["adv"] == 57
    assert right.dominant() is None
    building = nouns.pos_profile(wn, "building")
    assert building.counts["verb"] == pytest.approx(139 / 8)
    assert building.dominant() == "noun"
    assert nouns.pos_profile(wn, "like").dominant() == "verb"
    assert nouns.pos_profile(wn, "paris").dominant() == "proper"
    assert nouns.pos_profile(wn, "xyzzyq").dominant() is None


def test_names_and_plural_forms(wn):
    assert not nouns.is_noun(wn, "wells")
    assert nouns.is_noun(wn, "children")
    assert nouns.noun_forms(wn, "years") == {"years", "year"}
    assert nouns.noun_forms(wn, "children") == {"children", "child"}


def test_select_nouns_small_case(wn):
    candidates = ["the", "dog", "dogs", "running", "right", "paris", "john", "children", "child",
                  "bitches", "xyz", "hello", "mins", "wells", "Cat", "cat-food", "ox", "building",
                  "years", "year", "like", "fire", "haven", "cat"]
    # the: stop word; dogs/child/year: plural duplicates of earlier words; running, like:
    # verbs; right: no majority; paris: proper; john, hello, mins, haven: excluded lists;
    # bitches: inflection of an excluded word; xyz: unknown; wells: a name; Cat, cat-food,
    # ox: form; fire: kept despite sklearn's stop list.
    assert nouns.select_nouns(candidates, 100, wn) == ["dog", "children", "building", "years", "fire", "cat"]
    assert nouns.select_nouns(candidates, 2, wn) == ["dog", "children"]


def test_stop_words_composition():
    stop = nouns.stop_words()
    assert {"the", "which", "yourselves", "somebody", "okay", "isn", "sex"} <= stop
    assert not stop & nouns.STOP_WORDS_KEPT
    assert len(nouns.PAPER_EXCLUDED) == 43


def test_committed_list_follows_the_rules():
    words = load_words(ROOT / "vocab" / "nouns-5000.txt")
    assert len(words) == 5000
    assert words[:10] == ["time", "people", "way", "year", "day", "life", "world", "man", "home", "part"]
    assert all(re.fullmatch(r"[a-z]{3,}", w) for w in words)
    assert not set(words) & nouns.stop_words()

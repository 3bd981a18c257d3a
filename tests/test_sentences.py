"""sentences: harvesting rules, sentence files, WordNet glosses, the harvest CLI."""

from __future__ import annotations

import pytest

from pipeline import sentences
from pipeline.errors import PipelineError

# ------------------------------------------------------------ harvest

def test_harvest_rules_and_roundtrip(tmp_path):
    corpus = tmp_path / "corpus.txt"
    long = "the dog " + " ".join(["word"] * 99)
    corpus.write_text("\n".join([
        "A dog ran.",                                   # 3 tokens: too short
        long,                                           # 101 tokens: too long
        "Dogs are loud animals at night.",              # 'dogs' is not 'dog'
        "The dog's bone lay in the yard. The cat watched it closely.",
        "My cat and my dog sleep together every day.",
        "Another dog barked at the mail carrier.",
        "The DOG barked again at the carrier.",
    ]) + "\n")
    out = tmp_path / "sents.txt"
    summary = sentences.harvest(["dog", "cat", "tree"], [str(corpus)], out, max_per_word=2)
    lines = out.read_text().splitlines()
    assert lines == ["The dog's bone lay in the yard.", "The cat watched it closely.",
                     "My cat and my dog sleep together every day."]
    assert summary["words_without_sentences"] == ["tree"]
    loaded = sentences.load_sentences(out, ["dog", "cat", "tree"], 2)
    assert loaded == [[lines[0], lines[2]], [lines[1], lines[2]], []]


def test_load_sentences_tab_assignment(tmp_path):
    f = tmp_path / "s.tsv"
    f.write_text("cat\tThe dog and the cat met.\nA dog alone here today.\n")
    assert sentences.load_sentences(f, ["dog", "cat"], 5) == [["A dog alone here today."], ["The dog and the cat met."]]


def test_wordnet_sentences_split_gloss_and_examples():
    try:
        sents = sentences.wordnet_sentences()
        first = [next(sents) for _ in range(200)]
    except PipelineError:
        pytest.skip("WordNet Debian files not installed")
    assert not any('"' in s for s in first)
    full = list(s for s in sentences.wordnet_sentences() if "barked all night" in s)
    assert "the dog barked all night" in full


def test_harvest_cli(tmp_path, capsys):
    vocab = tmp_path / "v.txt"
    vocab.write_text("dog\ncat\n")
    corpus = tmp_path / "c.txt"
    corpus.write_text("The dog sat on the mat today.\n")
    assert sentences.main(["harvest", "--vocab", str(vocab), "--corpus", str(corpus), "--out",
                        str(tmp_path / "o.txt"), "--max", "3"]) == 0
    assert "1 without any: cat" in capsys.readouterr().out
    assert sentences.main(["harvest", "--vocab", str(vocab), "--corpus", str(tmp_path / "missing.txt"),
                        "--out", str(tmp_path / "o.txt")]) == 2

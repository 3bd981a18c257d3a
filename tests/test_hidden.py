"""hidden: word location, batched pooling vs a one-prompt-at-a-time reference on a tiny
random Llama, the stage's output file, resume after an interruption, sentence harvesting."""

from __future__ import annotations

import argparse
import json
import re

import numpy as np
import pytest

from pipeline import hidden, paths, pooling, sentences
from pipeline.errors import PipelineError
from pipeline.manifest import Manifest
from pipeline.prompts import hidden_prompt
from pipeline.rules import Rules

PAPER = Rules(paper=True)

WORDS = ["dog", "cat", "xylophone", "tree", "art", "water", "king", "milk"]


def _opts(**kw):
    base = dict(model=None, paradigm=None, strategy=None, shard=(0, 1), engine="local", address=None,
                limit=None, force=False)
    base.update(kw)
    return argparse.Namespace(**base)


# ------------------------------------------------------------ location

def test_locate_word_default_rule():
    text = "Art lovers: the art of starting"
    assert pooling.locate_word(text, "art") == (16, 19)
    assert pooling.locate_word("Dog days. A DOG.", "dog") == (12, 15)
    assert pooling.locate_word("Dogs run; dog-like", "dog") == (10, 13)
    assert pooling.locate_word("hotdogs only", "dog") is None


def test_locate_word_paper_mode_quirks():
    text = "the art of starting"
    assert pooling.locate_word(text, "art", PAPER) == (13, 16)
    assert text[13:16] == "art"
    assert pooling.locate_word("Dog barks.", "dog", PAPER) is None


def test_locate_word_any_script_and_inner_joins():
    assert pooling.locate_word("Un café, puis un autre CAFÉ.", "café") == (23, 27)
    assert pooling.locate_word("cafés only", "café") is None
    assert pooling.locate_word("Send an e-mail at five o'clock.", "e-mail") == (8, 14)
    assert pooling.locate_word("Send an e-mail at five o'clock.", "o'clock") == (23, 30)
    assert pooling.locate_word("Zoë and zoë", "zoë") == (8, 11)
    assert pooling.locate_word("a_dog here", "dog") == (2, 5)  # underscore is not a letter


def test_word_token_indices_zero_width_tokens_only_in_paper_mode():
    offsets, special = [(0, 0), (0, 3), (3, 3), (3, 7)], [1, 0, 0, 0]
    assert pooling.word_token_indices(offsets, special, (0, 7)) == ([1, 3], True)
    assert pooling.word_token_indices(offsets, special, (0, 7), zero_width=True) == ([1, 2, 3], True)


def test_word_token_indices_multi_token_and_fallback(tiny_llama_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_llama_dir)
    text = "What is the meaning of the word xylophone?"
    enc = tok(text, return_offsets_mapping=True, return_special_tokens_mask=True)
    sel, found = pooling.word_token_indices(enc["offset_mapping"], enc["special_tokens_mask"],
                                           pooling.locate_word(text, "xylophone"))
    assert found and len(sel) > 1
    assert tok.decode([enc["input_ids"][i] for i in sel]).strip() == "xylophone"
    assert sel == list(range(sel[0], sel[-1] + 1))
    sel, found = pooling.word_token_indices(enc["offset_mapping"], enc["special_tokens_mask"], None)
    assert not found and sel == [i for i, s in enumerate(enc["special_tokens_mask"]) if not s]
    offsets, special = [(0, 0), (0, 3), (3, 7)], [1, 0, 0]
    assert pooling.word_token_indices(offsets, special, (0, 3)) == ([1], True)


# ------------------------------------------------------------ pooling

def _reference(model, tok, text, word, paper_compat=False):
    """One prompt per forward pass, tokens chosen from offsets, mean per layer (the paper)."""
    import torch

    enc = tok(text, return_offsets_mapping=True, return_special_tokens_mask=True, return_tensors="pt")
    with torch.no_grad():
        hs = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"],
                   output_hidden_states=True).hidden_states
    if paper_compat:
        start = text.rfind(word)
        span = None if start < 0 else (start, start + len(word))
    else:
        ms = list(re.finditer(rf"(?<![A-Za-z0-9]){re.escape(word)}(?![A-Za-z0-9])", text, re.I))
        span = (ms[-1].start(), ms[-1].end()) if ms else None
    offs = enc["offset_mapping"][0].tolist()
    special = enc["special_tokens_mask"][0].tolist()
    real = [i for i, (a, b) in enumerate(offs) if not special[i] and b > a]
    sel = [i for i in real if span and offs[i][0] < span[1] and offs[i][1] > span[0]] or real
    return torch.stack([h[0, sel].float().mean(0) for h in hs]).numpy()


@pytest.fixture(scope="module")
def tiny(tiny_llama_dir):
    from pipeline.config import ModelCfg

    return pooling.load_model(ModelCfg(name="tiny", path=str(tiny_llama_dir)), dtype="float32", device="cpu")


@pytest.mark.parametrize("paper_compat", [False, True])
def test_batched_pooling_equals_unbatched(tiny, paper_compat):
    tok, model = tiny
    texts = [hidden_prompt("task_fc", "xylophone"), hidden_prompt("meaning", "dog"),
             "Art is long; the art of starting is short.", "Dog barks at the dog.",
             hidden_prompt("task_fa", "water"), "king"]
    words = ["xylophone", "dog", "art", "dog", "water", "king"]
    pooler = pooling.Pooler(tok, model, batch_size=4, rules=Rules(paper=paper_compat))
    encoded = pooler.encode(texts, words)
    got = {}
    for idx, vec in pooler.pooled(encoded):
        for r, i in enumerate(idx):
            got[int(i)] = vec[:, r].numpy()
    assert pooler.forward_calls == 2
    for i, (text, word) in enumerate(zip(texts, words)):
        ref = _reference(model, tok, text, word, paper_compat)
        np.testing.assert_allclose(got[i], ref, rtol=1e-4, atol=1e-5)


# ------------------------------------------------------------ stage

SENTENCES = [
    "The dog slept by the fire all night.",
    "A cat and a dog shared one bowl.",
    "She played the xylophone at the school concert.",
    "Water ran down the old stone steps.",
    "The king drank water from a golden cup.",
    "Art museums were closed on that Monday.",
    "The tree fell across the road in the storm.",
    "Another dog barked at the passing car.",
    "Every cat in the village came to the square.",
]


@pytest.fixture
def stage_cfg(make_config, tiny_llama_dir, tmp_path):
    sent = tmp_path / "sentences.txt"
    sent.write_text("\n".join(SENTENCES) + "\n")

    def _make(**hidden_kw):
        cfg = make_config(models=[{"name": "tiny", "path": str(tiny_llama_dir)}],
                          hidden={"strategies": ["meaning", "averaged"], "sentences": str(sent),
                                  "max_sentences": 2, "batch_size": 3, "dtype": "float32", "device": "cpu",
                                  **hidden_kw})
        paths.vocab_file(cfg).parent.mkdir(parents=True, exist_ok=True)
        paths.vocab_file(cfg).write_text("\n".join(WORDS) + "\n")
        return cfg
    return _make


def test_stage_output_matches_reference(stage_cfg, tiny, monkeypatch):
    tok, model = tiny
    monkeypatch.setattr(hidden, "_BLOCK_WORDS", 3)
    cfg = stage_cfg()
    hidden.run(cfg, _opts())
    meaning = np.load(paths.hidden_file(cfg, "tiny", "meaning"))
    assert meaning.dtype == np.float16 and meaning.shape == (3, len(WORDS), 32)
    for j, w in enumerate(WORDS):
        ref = _reference(model, tok, hidden_prompt("meaning", w), w)
        np.testing.assert_allclose(meaning[:, j].astype(np.float32), ref, rtol=2e-3, atol=2e-3)
    averaged = np.load(paths.hidden_file(cfg, "tiny", "averaged"))
    sents = sentences.load_sentences(cfg.hidden.sentences, WORDS, 2)
    assert sents[0] == SENTENCES[:2] and sents[WORDS.index("milk")] == []
    for j, w in enumerate(WORDS):
        texts = sents[j] or [hidden_prompt("meaning", w)]
        ref = np.mean([_reference(model, tok, t, w) for t in texts], axis=0)
        np.testing.assert_allclose(averaged[:, j].astype(np.float32), ref, rtol=2e-3, atol=2e-3)
    summary = Manifest(cfg.run_dir).summary("hidden/tiny/averaged")
    assert summary["fallback_words"] == 1 and summary["fallback_word_list"] == ["milk"]
    assert summary["word_not_found"] == 0
    side = json.loads(paths.hidden_file(cfg, "tiny", "averaged").with_suffix(".json").read_text())
    assert side["vocabulary"] == WORDS
    mtime = paths.hidden_file(cfg, "tiny", "meaning").stat().st_mtime_ns
    hidden.run(cfg, _opts())
    assert paths.hidden_file(cfg, "tiny", "meaning").stat().st_mtime_ns == mtime


def test_resume_after_interruption(stage_cfg, monkeypatch):
    monkeypatch.setattr(hidden, "_BLOCK_WORDS", 3)
    cfg = stage_cfg(strategies=["meaning"])
    real_save = hidden._save_progress
    calls = {"n": 0}

    def crash_after_first_block(path, state):
        real_save(path, state)
        calls["n"] += 1
        if state["done"] == 3:
            raise KeyboardInterrupt

    monkeypatch.setattr(hidden, "_save_progress", crash_after_first_block)
    with pytest.raises(KeyboardInterrupt):
        hidden.run(cfg, _opts())
    out = paths.hidden_file(cfg, "tiny", "meaning")
    assert not out.exists() and out.with_name(out.name + ".partial").exists()
    assert not Manifest(cfg.run_dir).stage("hidden/tiny/meaning")["complete"]
    monkeypatch.setattr(hidden, "_save_progress", real_save)
    encoded_words = []
    real_encode = pooling.Pooler.encode

    def spy(self, texts, words):
        encoded_words.extend(words)
        return real_encode(self, texts, words)

    monkeypatch.setattr(pooling.Pooler, "encode", spy)
    hidden.run(cfg, _opts())
    assert encoded_words == WORDS[3:]
    resumed = np.load(out)
    cfg2 = stage_cfg(strategies=["meaning"])
    cfg2.experiment.name = "fresh"
    paths.vocab_file(cfg2).parent.mkdir(parents=True, exist_ok=True)
    paths.vocab_file(cfg2).write_text("\n".join(WORDS) + "\n")
    hidden.run(cfg2, _opts())
    np.testing.assert_array_equal(resumed, np.load(paths.hidden_file(cfg2, "tiny", "meaning")))
    assert not out.with_name(out.name + ".progress.json").exists()


def test_missing_sentence_file_names_fix(stage_cfg, tmp_path):
    cfg = stage_cfg(sentences=str(tmp_path / "nope.txt"))
    with pytest.raises(PipelineError, match=r"nope\.txt: file not found.*harvest"):
        hidden.run(cfg, _opts(strategy="averaged"))


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


@pytest.mark.parametrize("strategy", ["task_fc", "meaning"])
def test_shared_prefix_pass_equals_reference(tiny, strategy):
    tok, model = tiny
    words = ["xylophone", "dog", "water", "king", "art"]
    texts = [hidden_prompt(strategy, w) for w in words]
    pooler = pooling.Pooler(tok, model, batch_size=2)
    encoded = pooler.encode(texts, words)
    assert pooler._common_prefix([ids for ids, _ in encoded]) >= pooling.MIN_PREFIX
    got = {}
    for idx, vec in pooler.pooled(encoded):
        for r, i in enumerate(idx):
            got[int(i)] = vec[:, r].numpy()
    assert pooler.share_prefix and pooler._checked
    assert pooler.forward_calls == 1 + 3 + 1
    for i, (text, word) in enumerate(zip(texts, words)):
        np.testing.assert_allclose(got[i], _reference(model, tok, text, word), rtol=1e-4, atol=1e-5)


def test_averaged_fallback_default_meaning_paper_bare_word():
    texts, fallback = hidden._texts("averaged", ["dog", "milk"], [["A dog ran home."], []])
    assert texts == [["A dog ran home."], [hidden_prompt("meaning", "milk")]] and fallback == ["milk"]
    texts, fallback = hidden._texts("averaged", ["dog", "milk"], [["A dog ran home."], []], PAPER)
    assert texts == [["A dog ran home."], ["milk"]] and fallback == ["milk"]


# ------------------------------------------------------------ damaged outputs, concurrency

@pytest.mark.parametrize("damage", ["random bytes", "truncated", "all NaN", "deleted"])
def test_damaged_output_is_named_then_rebuilt(stage_cfg, damage):
    import os

    cfg = stage_cfg(strategies=["meaning"])
    hidden.run(cfg, _opts())
    out = paths.hidden_file(cfg, "tiny", "meaning")
    good = np.load(out)
    if damage == "random bytes":
        out.write_bytes(os.urandom(out.stat().st_size))
    elif damage == "truncated":
        out.write_bytes(out.read_bytes()[: out.stat().st_size // 2])
    elif damage == "all NaN":
        np.save(out, np.full_like(good, np.nan))
    else:
        out.unlink()
    with pytest.raises(PipelineError, match=r"meaning\.npy: hidden states of tiny/meaning .*"
                                            r"pipeline hidden --config test\.toml --model tiny --strategy meaning"):
        hidden.load_hidden(cfg, "tiny", "meaning")
    hidden.run(cfg, _opts())
    np.testing.assert_array_equal(np.load(out), good)


def test_unregistered_non_finite_file_is_refused(stage_cfg):
    cfg = stage_cfg(strategies=["meaning"])
    out = paths.hidden_file(cfg, "tiny", "meaning")
    out.parent.mkdir(parents=True, exist_ok=True)
    arr = np.zeros((3, len(WORDS), 32), dtype=np.float16)
    arr[1, 2, 0] = np.inf
    np.save(out, arr)
    with pytest.raises(PipelineError, match=r"non-finite values \(NaN or inf\) in 1 layer of 3"):
        hidden.load_hidden(cfg, "tiny", "meaning", n_words=len(WORDS))


def test_second_extraction_of_one_cell_is_refused(stage_cfg):
    from pipeline.manifest import StageLock

    cfg = stage_cfg(strategies=["meaning"])
    out = paths.hidden_file(cfg, "tiny", "meaning")
    with StageLock(out.with_name(f".{out.stem}.lock"), "test"):
        with pytest.raises(PipelineError, match=r"\.meaning\.lock is held by another run \(pid"):
            hidden.run(cfg, _opts())
    hidden.run(cfg, _opts())
    assert out.exists()


def test_cuda_device_without_cuda_is_named(stage_cfg):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    cfg = stage_cfg(device="cuda")
    with pytest.raises(PipelineError, match=r"hidden.device = 'cuda' but this machine has no usable CUDA device"):
        hidden.run(cfg, _opts())

"""hidden: the stage's output file against a one-prompt-at-a-time reference, resume after an
interruption, damaged outputs rebuilt, one writer per cell."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pipeline import hidden, paths, pooling, sentences
from pipeline.errors import PipelineError
from pipeline.manifest import Manifest
from pipeline.options import Options
from pipeline.prompts import hidden_prompt
from pipeline.rules import Rules

PAPER = Rules(paper=True)

WORDS = ["dog", "cat", "xylophone", "tree", "art", "water", "king", "milk"]


from test_pooling import _reference  # noqa: E402

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
    hidden.run(cfg, Options())
    meaning = np.load(paths.hidden_file(cfg, "tiny", "meaning"))
    assert meaning.dtype == np.float32 and meaning.shape == (3, len(WORDS), 32)
    for j, w in enumerate(WORDS):
        ref = _reference(model, tok, hidden_prompt("meaning", w), w, guard=True)
        np.testing.assert_allclose(meaning[:, j], ref, rtol=1e-4, atol=1e-5)
    averaged = np.load(paths.hidden_file(cfg, "tiny", "averaged"))
    sents = sentences.load_sentences(cfg.hidden.sentences, WORDS, 2)
    assert sents[0] == SENTENCES[:2] and sents[WORDS.index("milk")] == []
    for j, w in enumerate(WORDS):
        texts = sents[j] or [hidden_prompt("meaning", w)]
        ref = np.mean([_reference(model, tok, t, w, guard=True) for t in texts], axis=0)
        np.testing.assert_allclose(averaged[:, j], ref, rtol=1e-4, atol=1e-5)
    summary = Manifest(cfg.run_dir).summary("hidden/tiny/averaged")
    assert summary["fallback_words"] == 1 and summary["fallback_word_list"] == ["milk"]
    assert summary["word_not_found"] == 0
    assert summary["sink_guard"] == "bos '<|im_start|>'" and summary["guarded_texts"] == summary["texts"]
    assert summary["store_dtype"] == "float32"
    side = json.loads(paths.hidden_file(cfg, "tiny", "averaged").with_suffix(".json").read_text())
    assert side["vocabulary"] == WORDS
    mtime = paths.hidden_file(cfg, "tiny", "meaning").stat().st_mtime_ns
    hidden.run(cfg, Options())
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
        hidden.run(cfg, Options())
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
    hidden.run(cfg, Options())
    assert encoded_words == WORDS[3:]
    resumed = np.load(out)
    cfg2 = stage_cfg(strategies=["meaning"])
    cfg2.experiment.name = "fresh"
    paths.vocab_file(cfg2).parent.mkdir(parents=True, exist_ok=True)
    paths.vocab_file(cfg2).write_text("\n".join(WORDS) + "\n")
    hidden.run(cfg2, Options())
    np.testing.assert_array_equal(resumed, np.load(paths.hidden_file(cfg2, "tiny", "meaning")))
    assert not out.with_name(out.name + ".progress.json").exists()


def test_missing_sentence_file_names_fix(stage_cfg, tmp_path):
    cfg = stage_cfg(sentences=str(tmp_path / "nope.txt"))
    with pytest.raises(PipelineError, match=r"nope\.txt: file not found.*harvest"):
        hidden.run(cfg, Options(strategy="averaged"))


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
    hidden.run(cfg, Options())
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
    hidden.run(cfg, Options())
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
            hidden.run(cfg, Options())
    hidden.run(cfg, Options())
    assert out.exists()


def test_cuda_device_without_cuda_is_named(stage_cfg):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    cfg = stage_cfg(device="cuda")
    with pytest.raises(PipelineError, match=r"hidden.device = 'cuda' but this machine has no usable CUDA device"):
        hidden.run(cfg, Options())


def test_temp_files_of_a_killed_extraction_are_removed(stage_cfg):
    cfg = stage_cfg(strategies=["meaning"])
    out = paths.hidden_file(cfg, "tiny", "meaning")
    out.parent.mkdir(parents=True, exist_ok=True)
    stale = [out.with_name(f".{out.name}.progress.json.tmp-999999"), out.with_name(f".{out.name}.tmp-999998"),
             out.with_name(f".{paths.sidecar(out).name}.tmp-999997")]
    for f in stale:
        f.write_text("{")
    other = out.with_name(".task_fc.npy.progress.json.tmp-999996")
    other.write_text("{")
    hidden.run(cfg, Options())
    assert out.exists() and not any(f.exists() for f in stale)
    assert other.exists(), "another cell's files belong to that cell's lock holder"


# ------------------------------------------------------------ sink guard and storage (issues 20.7, 21)

def test_paper_mode_feeds_raw_text(stage_cfg, tiny):
    tok, model = tiny
    cfg = stage_cfg(strategies=["averaged"])
    cfg.experiment.paper_mode = True
    hidden.run(cfg, Options())
    averaged = np.load(paths.hidden_file(cfg, "tiny", "averaged"))
    sents = sentences.load_sentences(cfg.hidden.sentences, WORDS, 2, PAPER)
    j = WORDS.index("dog")
    ref = np.mean([_reference(model, tok, t, "dog", paper_compat=True) for t in sents[j]], axis=0)
    np.testing.assert_allclose(averaged[:, j], ref, rtol=1e-4, atol=1e-5)
    summary = Manifest(cfg.run_dir).summary("hidden/tiny/averaged")
    assert summary["sink_guard"] == "none" and summary["guarded_texts"] == 0


def test_paper_mode_refuses_a_sink_guard(make_config):
    from pipeline.config import ConfigError

    with pytest.raises(ConfigError, match="hidden.sink_guard"):
        make_config(experiment={"name": "t", "paper_mode": True}, hidden={"sink_guard": "bos"})
    with pytest.raises(ConfigError, match="hidden.sink_guard"):
        make_config(hidden={"sink_guard": "first"})
    assert make_config(experiment={"name": "t", "paper_mode": True}).hidden.sink_guard == "auto"


def _scaled_pooler(monkeypatch, factor):
    real = pooling.Pooler.pooled

    def scaled(self, encoded):
        for idx, vec in real(self, encoded):
            yield idx, vec * factor
    monkeypatch.setattr(pooling.Pooler, "pooled", scaled)


def test_storage_keeps_values_beyond_float16(stage_cfg, tiny, monkeypatch):
    """Issue 20.7: values beyond +-65,504 were clipped into float16; now every value is stored
    as computed, and float16 storage refuses what it cannot hold."""
    tok, model = tiny
    _scaled_pooler(monkeypatch, 1e5)
    cfg = stage_cfg(strategies=["meaning"])
    hidden.run(cfg, Options())
    stored = hidden.load_hidden(cfg, "tiny", "meaning", n_words=len(WORDS))
    ref = _reference(model, tok, hidden_prompt("meaning", "dog"), "dog", guard=True) * 1e5
    assert np.abs(ref).max() > 65504
    np.testing.assert_allclose(stored[:, 0], ref, rtol=1e-4)
    cfg16 = stage_cfg(strategies=["meaning"], store_dtype="float16")
    cfg16.experiment.name = "half"
    paths.vocab_file(cfg16).parent.mkdir(parents=True, exist_ok=True)
    paths.vocab_file(cfg16).write_text("\n".join(WORDS) + "\n")
    with pytest.raises(PipelineError, match="hidden.store_dtype"):
        hidden.run(cfg16, Options())
    assert not paths.hidden_file(cfg16, "tiny", "meaning").exists()
    monkeypatch.undo()
    hidden.run(cfg16, Options(force=True))
    half = hidden.load_hidden(cfg16, "tiny", "meaning", n_words=len(WORDS))
    assert half.dtype == np.float16
    np.testing.assert_allclose(half[:, 0].astype(np.float32), ref / 1e5, rtol=2e-3, atol=2e-3)


def test_force_replaces_an_extraction_made_with_other_settings(stage_cfg):
    """`hidden --force` after a settings change re-extracts (it stopped at the stale record)."""
    cfg = stage_cfg(strategies=["meaning"], sink_guard="none")
    hidden.run(cfg, Options())
    cfg2 = stage_cfg(strategies=["meaning"])
    with pytest.raises(PipelineError, match="--force"):
        hidden.run(cfg2, Options())
    hidden.run(cfg2, Options(force=True))
    assert Manifest(cfg2.run_dir).summary("hidden/tiny/meaning")["sink_guard"] == "bos '<|im_start|>'"

"""Shared fixtures: small configs in a temp run dir, the converted SmolLM2 and a tiny
random-weight Llama that shares SmolLM2's tokenizer and chat template."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from pipeline.config import from_dict

ROOT = Path(__file__).resolve().parents[1]
SMOLLM2 = ROOT / "data" / "models" / "smollm2-135m-instruct"
WORDS = ["dog", "cat", "house", "tree", "water", "music", "money", "car", "bread", "river",
         "doctor", "school", "window", "garden", "city", "horse", "paper", "king", "ship", "milk",
         "chair", "table", "apple", "mountain"]

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def write_vocab(path: Path, words=WORDS) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(words) + "\n")
    return path


@pytest.fixture
def make_config(tmp_path):
    """Build a validated Config rooted in tmp_path; keyword sections override defaults.

    Example: make_config(vocab={"size": 20}, behave={"backend": "fake"}).
    """
    def _make(**sections):
        vocab = write_vocab(tmp_path / "words.txt")
        raw = {
            "experiment": {"name": "t", "data_dir": str(tmp_path / "data")},
            "vocab": {"source": str(vocab), "size": 20},
            "trials": {"fa_runs": 3},
            "behave": {"backend": "fake", "chunk_size": 16},
            "models": [{"name": "m", "path": str(SMOLLM2)}],
        }
        for key, value in sections.items():
            if isinstance(value, dict) and isinstance(raw.get(key), dict):
                raw[key] = {**raw[key], **value}
            else:
                raw[key] = value
        return from_dict(raw, source="test.toml")
    return _make


@pytest.fixture(scope="session")
def smollm2_dir() -> Path:
    if not (SMOLLM2 / "config.json").exists():
        pytest.fail(f"{SMOLLM2} missing: run `make model` (make test does it)")
    return SMOLLM2


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory, smollm2_dir) -> Path:
    """A 2-layer random Llama (seed 0) with the SmolLM2 tokenizer: fast, deterministic, no quality."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    out = tmp_path_factory.mktemp("tiny-llama")
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=49152, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
                         tie_word_embeddings=True, bos_token_id=1, eos_token_id=2, pad_token_id=2)
    LlamaForCausalLM(config).to(torch.float32).save_pretrained(out)
    AutoTokenizer.from_pretrained(smollm2_dir).save_pretrained(out)
    for extra in ("chat_template.jinja", "generation_config.json"):
        if (smollm2_dir / extra).exists() and not (out / extra).exists():
            shutil.copy(smollm2_dir / extra, out / extra)
    return out


@pytest.fixture(scope="session")
def tiny(tiny_llama_dir):
    """The tiny Llama loaded for pooling: (tokenizer, model), float32 on CPU."""
    from pipeline.config import ModelCfg
    from pipeline.pooling import load_model

    return load_model(ModelCfg(name="tiny", path=str(tiny_llama_dir)), dtype="float32", device="cpu")


@pytest.fixture(scope="session")
def vllm_f32(smollm2_dir):
    """One in-process vLLM engine on SmolLM2 in float32, shared by the tests that compare other
    paths (scoring, the API server) with it: an engine start costs about a minute on 2 cores."""
    pytest.importorskip("vllm")
    from pipeline.backends.vllm import VLLMBackend

    be = VLLMBackend(str(smollm2_dir), dtype="float32", max_model_len=1024, max_num_seqs=32,
                     gpu_memory_utilization=0.15, enforce_eager=True)
    yield be
    be.close()

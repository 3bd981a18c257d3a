"""pooling: word location under both rules, token selection, batched and prefix-shared
pooling against a one-prompt-at-a-time reference on a tiny random Llama."""

from __future__ import annotations

import re

import numpy as np
import pytest

from pipeline import pooling
from pipeline.prompts import hidden_prompt
from pipeline.rules import Rules

PAPER = Rules(paper=True)


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

def _reference(model, tok, text, word, paper_compat=False, guard=False):
    """One prompt per forward pass, tokens chosen from offsets, mean per layer (the paper);
    `guard`: the BOS in front of a text that does not start with a special token."""
    import torch

    enc = tok(text, return_offsets_mapping=True, return_special_tokens_mask=True, return_tensors="pt")
    if guard and int(enc["input_ids"][0, 0]) not in tok.all_special_ids:
        enc["input_ids"] = torch.cat([torch.tensor([[tok.bos_token_id]]), enc["input_ids"]], dim=1)
        enc["attention_mask"] = torch.ones_like(enc["input_ids"])
        enc["offset_mapping"] = torch.cat([torch.zeros((1, 1, 2), dtype=torch.long), enc["offset_mapping"]], dim=1)
        enc["special_tokens_mask"] = torch.cat([torch.ones((1, 1), dtype=torch.long),
                                                enc["special_tokens_mask"]], dim=1)
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


# ------------------------------------------------------------ special tokens and the attention sink

def test_fallback_excludes_special_tokens_by_id(tiny):
    """Issue 20.2: a literal <|endoftext|> inside a text has special_tokens_mask 0 but a special id;
    the whole-text fallback (word not found) must leave it out, in paper mode as the authors did."""
    tok, model = tiny
    text = "Once upon <|endoftext|> a time"
    for rules in (PAPER, Rules()):
        pooler = pooling.Pooler(tok, model, rules=rules)
        (ids, sel), = pooler.encode([text], ["xylophone"])
        eot = ids.index(tok.convert_tokens_to_ids("<|endoftext|>"))
        assert pooler.not_found == 1 and eot not in sel
        assert all(ids[i] not in tok.all_special_ids for i in sel) and len(sel) == len(ids) - 1 - (not rules.paper)


def test_sink_guard_keeps_the_word_off_position_0(tiny):
    """Issue 21: a sentence starting with the word pools position 0 (the attention sink) unless
    the BOS (or the neutral prefix) is put in front; paper mode feeds the raw text."""
    tok, model = tiny
    text = "Service provided to customers is good."
    raw = tok(text)["input_ids"]
    (ids, sel), = pooling.Pooler(tok, model, rules=PAPER).encode([text], ["service"])
    assert ids == raw and pooling.locate_word(text, "service", PAPER) is None
    (ids, sel), = pooling.Pooler(tok, model, rules=PAPER).encode([text], ["Service"])
    assert sel == [0]
    pooler = pooling.Pooler(tok, model, sink_guard="auto")
    (ids, sel), = pooler.encode([text], ["service"])
    assert ids == [tok.bos_token_id] + raw and sel == [1] and pooler.guarded == 1
    assert pooler.guard_name == "bos '<|im_start|>'"
    pooler = pooling.Pooler(tok, model, sink_guard="prefix", sink_prefix="\n")
    (ids, sel), = pooler.encode([text], ["service"])
    nl = tok("\n", add_special_tokens=False)["input_ids"]
    assert ids == nl + raw and sel == [len(nl)]
    (ids, sel), = pooling.Pooler(tok, model, sink_guard="auto").encode(["<|im_start|>dog"], ["dog"])
    assert ids == tok("<|im_start|>dog")["input_ids"]  # already starts with a special token: nothing added


def test_default_fallback_never_pools_position_0(tiny):
    """Without a guard, the default whole-text fallback still leaves the sink position out."""
    tok, model = tiny
    text = "Nothing here mentions it."
    (ids, sel), = pooling.Pooler(tok, model, sink_guard="none").encode([text], ["xylophone"])
    assert sel == list(range(1, len(ids)))
    (ids, sel), = pooling.Pooler(tok, model, rules=PAPER).encode([text], ["xylophone"])
    assert sel == list(range(len(ids)))


def test_guard_bos_without_bos_token_is_named(tiny):
    from pipeline.errors import PipelineError

    tok, model = tiny

    class NoBos:
        bos_token_id = None

        def __call__(self, text, add_special_tokens=True):
            return tok(text, add_special_tokens=add_special_tokens)

    with pytest.raises(PipelineError, match="defines no BOS token"):
        pooling.guard_tokens(NoBos(), "bos")
    ids, name = pooling.guard_tokens(NoBos(), "auto", "\n")
    assert ids == tok("\n", add_special_tokens=False)["input_ids"] and name == "prefix '\\n'"


@pytest.mark.slow
def test_sink_guard_removes_the_sink_norm_on_smollm2(smollm2_dir):
    """The real artifact (issue 21): on SmolLM2 a word pooled at position 0 has a norm tens of
    times the others' from layer 12 to the last block (the model's final norm hides it in the
    last entry); with the guard it is an ordinary vector."""
    from pipeline.config import ModelCfg

    tok, model = pooling.load_model(ModelCfg(name="s", path=str(smollm2_dir)), dtype="float32", device="cpu")
    texts = ["service provided to customers by the bank.", "The old service was slow.",
             "People waited for the service to start.", "A quick service at noon."]
    words = ["service"] * 4
    ratios = {}
    for guard in ("none", "auto"):
        pooler = pooling.Pooler(tok, model, sink_guard=guard)
        vec = next(pooler.pooled(pooler.encode(texts, words)))
        idx, v = vec
        norms = v.norm(dim=-1).numpy()[:, np.argsort(idx)]
        ratios[guard] = norms[12:-1, 0] / np.median(norms[12:-1, 1:], axis=1)  # the last entry is normed
    assert ratios["none"].min() > 10
    assert ratios["auto"].max() < 3

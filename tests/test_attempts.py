"""attempts: the prompt filled into a once-rendered chat template equals a full render."""

from __future__ import annotations

import pytest

from pipeline import attempts, trials
from pipeline.backends.base import Backend
from pipeline.prompts import chat_messages, fa_prompt, fc_prompt, fc_repair_prompt, render_chat

WORDS = ["dog", "cat", "house", "tree", "water", "music", "money", "car", "bread", "river", "doctor", "school",
         "window", "garden", "city", "horse", "paper", "king", "ship", "milk", "café", "o'clock", "{brace}"]
BAD = ["", "  output: dog, dog  ", "I think {cue}", "output:\n\n<|im_end|>", "\u00e9\u0301 \t", "x" * 300]


class _TokenizerBackend(Backend):
    def __init__(self, tok, strip=False, shout=False):
        self.tok, self.strip, self.shout, self.renders = tok, strip, shout, 0

    def render(self, messages):
        self.renders += 1
        if self.strip:
            messages = [{**m, "content": m["content"].strip()} for m in messages]
        if self.shout:
            messages = [{**m, "content": m["content"].upper()} for m in messages]
        return render_chat(self.tok, messages)


@pytest.mark.parametrize("system", [None, "You are a helpful assistant."])
def test_filled_template_is_byte_identical_on_every_trial(smollm2_dir, system):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(smollm2_dir)
    render = attempts.Renderer(_TokenizerBackend(tok), system)
    assert render.mode == "raw"
    fc = trials.build_fc_plan(WORDS, 16, 12345).to_pylist()
    fa = trials.build_fa_plan(WORDS, 3, 12345).to_pylist()
    users = [fc_prompt(t["cue"], t["candidates"]) for t in fc]
    users += [fc_repair_prompt(t["cue"], t["candidates"], BAD[i % len(BAD)]) for i, t in enumerate(fc)]
    users += [fa_prompt(t["cue"]) for t in fa]
    for user in users:
        assert render(user) == render_chat(tok, chat_messages(user, system))
    assert render.mode == "raw" and len(users) > 100


def test_stripping_template_is_filled_stripped_and_other_templates_render_in_full(smollm2_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(smollm2_dir)
    strip = _TokenizerBackend(tok, strip=True)
    render = attempts.Renderer(strip)
    user = fc_prompt("dog", ["cat", "leash"])
    assert user.endswith("output: ")
    for _ in range(20):
        assert render(user) == strip.render(chat_messages(user))
    assert render.mode == "strip"
    shout = _TokenizerBackend(tok, shout=True)
    render = attempts.Renderer(shout)
    assert render(user) == shout.render(chat_messages(user)) and render.mode is None
    assert render("again") == shout.render(chat_messages("again"))

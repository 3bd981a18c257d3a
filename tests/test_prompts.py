"""Prompt texts pinned byte for byte against the paper's code (METHOD.md §2-§4)."""

from __future__ import annotations

import hashlib

import pytest

from pipeline import prompts
from pipeline.errors import PipelineError

CANDS = ["banana", "violin", "therapy", "beer", "tango", "paper", "cat", "kiwi", "jeans", "car",
         "vacation", "note", "leash", "bath", "ceiling", "ivy"]

# Written out independently of prompts/*.txt, exactly as in forced_choice_<model>.py.
FC_HEAD = (
    "You will be given one input word and a list of candidate words.\n"
    "Your task is to select exactly 2 words from the list that are most\n"
    "similar or closely related to the input word.\n\n"
    "Rules:\n"
    "- Select exactly 2 words.\n"
    "- Both selected words must come from the provided candidate list.\n"
    "- Do not select the input word.\n"
    "- Output must contain only the 2 chosen words.\n"
    "- Use the format: output: word1, word2\n"
    "- Do not add any explanation, reasoning, commentary, or extra text.\n"
    "- Do not change spelling or number of words.\n\n"
    "Example:\n"
    "input word: dog\n"
    "candidates: [banana, violin, therapy, beer, tango, paper, cat, kiwi, jeans, car, vacation, note, leash, bath, ceiling, ivy]\n"
    "output: cat, leash\n\n"
    "Now follow the same format.\n\n"
)
FC_HOUSE = FC_HEAD + (
    "input word: house\n"
    "candidates: [banana, violin, therapy, beer, tango, paper, cat, kiwi, jeans, car, vacation, note, leash, bath, ceiling, ivy]\n"
    "output: "
)
FA_HEAD = (
    "You will be given one input word.\n"
    "Produce exactly five different single-word associations.\n\n"
    "Rules:\n"
    "- Output only five associated words.\n"
    "- Each must be a single word (no spaces or punctuation inside a word).\n"
    "- All five words must be different from each other.\n"
    "- Do not repeat the input word.\n"
    "- Order the words by how quickly they come to mind (first = strongest).\n"
    "- Format your answer as a single line starting with 'output:'.\n"
    "- Separate the five words with commas and a space.\n"
    "- End the line with a period.\n"
    "- Do not add any explanations or extra text.\n"
    "Example:\n"
    "input: dog.\n"
    "output: bark, leash, pet, animal, cat.\n\n"
    "input: "
)
SMOL_SYSTEM = "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"


def test_fc_prompt_exact():
    text = prompts.fc_prompt("house", CANDS)
    assert text == FC_HOUSE
    assert text.endswith("output: ")
    assert "that are most\nsimilar" in text


def test_fc_prompt_n_picks_and_short_group():
    text = prompts.fc_prompt("tree", ["a", "b", "c"], n_picks=3)
    assert "select exactly 3 words from the list" in text
    assert "- Select exactly 3 words.\n" in text
    assert "- Output must contain only the 3 chosen words.\n" in text
    assert text.endswith("input word: tree\ncandidates: [a, b, c]\noutput: ")


def test_fc_repair_prompt_exact():
    text = prompts.fc_repair_prompt("house", CANDS[:3], "  I think cat and {dog}\n")
    assert text == (
        "Your last answer was invalid because it did not follow the rules.\n"
        "Your task is to select exactly 2 words from the list that are most\n"
        "similar or closely related to the input word.\n\n"
        "You MUST follow the rules below exactly.\n\n"
        "Rules:\n"
        "- Select exactly 2 words.\n"
        "- Both selected words must come from the provided candidate list.\n"
        "- Do not select the input word.\n"
        "- Output must contain only the 2 chosen words.\n"
        "- Use the format: output: word1, word2\n"
        "- Do not add any explanation, reasoning, commentary, or extra text.\n"
        "- Do not change spelling or number of words.\n\n"
        "Your previous answer was:\nI think cat and {dog}\n\n"
        "Now follow the same format.\n\n"
        "input word: house\n"
        "candidates: [banana, violin, therapy]\n"
        "output: "
    )
    assert "Your previous answer was:\n\n\n" in prompts.fc_repair_prompt("house", CANDS, None)


def test_fa_prompt_exact():
    text = prompts.fa_prompt("house")
    assert text == FA_HEAD + "house.\n output: "


def test_hidden_prompts_exact():
    assert prompts.hidden_prompt("meaning", "house") == "What is the meaning of the word house?"
    assert prompts.hidden_prompt("task_fc", "house") == FC_HEAD + "input word: house\n"
    assert prompts.hidden_prompt("task_fa", "house") == FA_HEAD + "house"
    for strategy in ("meaning", "task_fc", "task_fa"):
        text = prompts.hidden_prompt(strategy, "zebra")
        assert text.rfind("zebra") == text.index("zebra")
    with pytest.raises(ValueError, match="averaged"):
        prompts.hidden_prompt("averaged", "house")


def test_chat_messages():
    assert prompts.chat_messages("hi") == [{"role": "user", "content": "hi"}]
    assert prompts.chat_messages("hi", "sys") == [{"role": "system", "content": "sys"},
                                                  {"role": "user", "content": "hi"}]


def test_render_chat_smollm2_fc(smollm2_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(smollm2_dir)
    rendered = prompts.render_chat(tok, prompts.chat_messages(prompts.fc_prompt("house", CANDS)))
    assert rendered == SMOL_SYSTEM + "<|im_start|>user\n" + FC_HOUSE + "<|im_end|>\n<|im_start|>assistant\n"


def test_render_chat_smollm2_fa_with_system_prompt(smollm2_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(smollm2_dir)
    msgs = prompts.chat_messages(prompts.fa_prompt("house"), "You are a helpful assistant.")
    rendered = prompts.render_chat(tok, msgs)
    assert rendered == ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
                        + FA_HEAD + "house.\n output: <|im_end|>\n<|im_start|>assistant\n")
    plain = prompts.render_chat(tok, prompts.chat_messages(prompts.fa_prompt("house")))
    assert plain == SMOL_SYSTEM + "<|im_start|>user\n" + FA_HEAD + "house.\n output: <|im_end|>\n<|im_start|>assistant\n"


def test_prompt_sha_and_hashes():
    assert prompts.prompt_sha("abc") == hashlib.sha256(b"abc").hexdigest()
    hashes = prompts.prompt_hashes()
    assert set(hashes) == set(prompts.TEMPLATES)
    for name, digest in hashes.items():
        assert digest == hashlib.sha256((prompts.PROMPTS_DIR / f"{name}.txt").read_bytes()).hexdigest()


def test_template_file_needs_final_newline(tmp_path, monkeypatch):
    (tmp_path / "fa.txt").write_text("input: {cue}.\n output: ")
    monkeypatch.setattr(prompts, "PROMPTS_DIR", tmp_path)
    prompts._template.cache_clear()
    try:
        with pytest.raises(PipelineError, match="fa.txt.*newline"):
            prompts.fa_prompt("dog")
        with pytest.raises(PipelineError, match="fc.txt.*missing"):
            prompts.fc_prompt("dog", ["cat"])
    finally:
        prompts._template.cache_clear()

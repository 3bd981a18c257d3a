"""Config loading: committed configs, unknown keys, types, impossible values, overrides."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.config import Config, ConfigError, from_dict, load_config

ROOT = Path(__file__).resolve().parents[1]
BASE = '[experiment]\nname = "t"\n'


def _toml(tmp_path, text, name="exp.toml") -> Path:
    p = tmp_path / name
    p.write_text(BASE + text)
    return p


def test_demo_config_loads():
    cfg = load_config(ROOT / "configs" / "demo.toml")
    assert cfg.experiment.name == "demo"
    assert cfg.vocab.source == "vocab/nouns-5000.txt" and cfg.vocab.size == 48
    assert cfg.behave.structured_fc is True
    assert [m.name for m in cfg.models] == ["smollm2-135m"]
    assert cfg.run_dir == Path("data") / "demo"
    assert cfg.source.endswith("demo.toml")


def test_paper_config_loads_with_paper_constants():
    cfg = load_config(ROOT / "configs" / "paper.toml")
    t = cfg.trials
    assert (t.fc_candidates, t.fc_picks, t.fc_seed, t.fa_runs, t.fa_seed, t.fa_associates) == (16, 2, 12345, 126, 12345, 5)
    b = cfg.behave
    assert (b.fc_max_tokens, b.fa_temperature, b.fa_top_p, b.fa_max_tokens) == (10, 0.7, 0.95, 25)
    assert (b.retries, b.retry_temperature, b.retry_top_p) == (5, 0.5, 0.9)
    assert b.structured_fc is False and b.structured_fa is False
    assert len(cfg.models) == 8
    rnj = cfg.model("rnj-1-instruct")
    assert rnj.system_prompt == "You are a helpful assistant."
    assert (rnj.retry_temperature, rnj.retry_top_p) == (0.2, 0.95)
    assert cfg.vocab.size == 5000 and cfg.rsa.paper_pairs == 500_000 and cfg.rsa.seed == 0
    # METHOD.md §7: the published regression ran seed 0 only (its *_sd columns are empty)
    assert cfg.regress.seeds == [0]
    assert (cfg.regress.test_size, cfg.regress.train_pairs, cfg.regress.cv) == (0.2, 100_000, 5)


def test_defaults_and_to_dict(tmp_path):
    cfg = load_config(_toml(tmp_path, ""))
    assert cfg.trials.fc_candidates == 16 and cfg.models == []
    d = cfg.to_dict()
    assert "source" not in d and d["trials"]["fc_seed"] == 12345
    assert from_dict(d, source="again").to_dict() == d


@pytest.mark.parametrize("text,pattern", [
    ("[trials]\nfc_candidate = 16\n", r"exp\.toml: unknown key 'trials\.fc_candidate'; did you mean 'trials\.fc_candidates'\?"),
    ("[trial]\nfc_seed = 1\n", r"exp\.toml: unknown key 'trial'; did you mean 'trials'\?"),
    ("[vocab]\nsorce = 'x'\n", r"unknown key 'vocab\.sorce'; did you mean 'vocab\.source'\?"),
    ("[rsa]\nzzzz = 1\n", r"unknown key 'rsa\.zzzz'; valid keys: methods, references"),
    ("[[models]]\nname = 'm'\npth = 'x'\n", r"unknown key 'models\[0\]\.pth'; did you mean 'models\[0\]\.path'\?"),
])
def test_unknown_keys_name_file_and_closest_key(tmp_path, text, pattern):
    with pytest.raises(ConfigError, match=pattern):
        load_config(_toml(tmp_path, text))


@pytest.mark.parametrize("text,pattern", [
    ("[trials]\nfc_seed = 'abc'\n", r"exp\.toml: 'trials\.fc_seed' must be int, got 'abc'"),
    ("[trials]\nfc_seed = true\n", r"'trials\.fc_seed' must be int, got True"),
    ("[trials]\nfc_seed = 1.5\n", r"'trials\.fc_seed' must be int, got 1\.5"),
    ("[behave]\nparadigms = 'fc'\n", r"'behave\.paradigms' must be a list of str, got 'fc'"),
    ("[behave]\nparadigms = ['fc', 3]\n", r"'behave\.paradigms\[1\]' must be str, got 3"),
    ("[behave]\nstructured_fc = 'yes'\n", r"'behave\.structured_fc' must be bool"),
    ("[[models]]\npath = 'x'\n", r"missing required key 'models\[0\]\.name'"),
])
def test_wrong_types(tmp_path, text, pattern):
    with pytest.raises(ConfigError, match=pattern):
        load_config(_toml(tmp_path, text))


def test_section_must_be_a_table():
    with pytest.raises(ConfigError, match=r"x\.toml: 'vocab' must be a table, got int"):
        from_dict({"experiment": {"name": "t"}, "vocab": 3}, source="x.toml")


def test_int_is_accepted_for_float(tmp_path):
    cfg = load_config(_toml(tmp_path, "[behave]\nfa_temperature = 1\n"))
    assert cfg.behave.fa_temperature == 1.0 and isinstance(cfg.behave.fa_temperature, float)


@pytest.mark.parametrize("text,pattern", [
    ("[vocab]\nsize = 10\n", r"exp\.toml: 'vocab\.size' = 10 is too small for trials\.fc_candidates = 16.*raise vocab\.size to 17"),
    ("[trials]\nfc_picks = 16\n", r"'trials\.fc_picks' = 16 must be between 1 and fc_candidates - 1 \(15\)"),
    ("[trials]\nfc_candidates = 1\n", r"'trials\.fc_candidates' = 1 must be at least 2"),
    ("[trials]\nfa_runs = 0\n", r"'trials\.fa_runs'"),
    ("[behave]\nfa_top_p = 0\n", r"'behave\.fa_top_p' = 0\.0 must be in \(0, 1\]"),
    ("[behave]\nchunk_size = 0\n", r"'behave\.chunk_size' = 0 must be at least 1"),
    ("[behave]\nretries = -1\n", r"'behave\.retries' = -1 must be 0 or more"),
    ("[behave]\nparadigms = ['fc', 'fx']\n", r"'behave\.paradigms' has unknown value 'fx' \(allowed: fc, fa, fc_scored[^)]*\)"),
    ("[behave]\nbackend = 'vlm'\n", r"unknown value 'vlm' \(allowed: vllm, hf, openai, fake\); did you mean 'vllm'\?"),
    ("[hidden]\nstrategies = ['averaged']\n", r"'hidden\.sentences' must name a sentence file"),
    ("[rsa]\nmethods = ['kendall']\n", r"'rsa\.methods' has unknown value 'kendall'"),
    ("[regress]\ntest_size = 1.0\n", r"'regress\.test_size' = 1\.0 must be in \(0, 1\)"),
    ("[baselines]\nencoder_template = 'This is a word'\n", r"'baselines\.encoder_template' must contain '\{w\}'"),
    ("[[models]]\nname = 'a'\npath = 'x'\n[[models]]\nname = 'a'\npath = 'y'\n", r"'models\[0\]\.name' = 'a' appears twice; names in \[\[models\]\] must be unique"),
    ("[[models]]\nname = 'a b'\npath = 'x'\n", r"'models\[0\]\.name' = 'a b' must be a plain name"),
])
def test_impossible_values(tmp_path, text, pattern):
    with pytest.raises(ConfigError, match=pattern):
        load_config(_toml(tmp_path, text))


def test_bad_experiment_name_and_missing_name(tmp_path):
    with pytest.raises(ConfigError, match=r"'experiment\.name' = '\.\./x' must be a plain name"):
        from_dict({"experiment": {"name": "../x"}}, source="x.toml")
    p = tmp_path / "noname.toml"
    p.write_text("[experiment]\ndata_dir = 'd'\n")
    with pytest.raises(ConfigError, match=r"noname\.toml: missing required key 'experiment\.name'"):
        load_config(p)


def test_unreadable_files(tmp_path):
    with pytest.raises(ConfigError, match=r"missing\.toml: config file not found"):
        load_config(tmp_path / "missing.toml")
    p = tmp_path / "broken.toml"
    p.write_text("[experiment\nname = 1\n")
    with pytest.raises(ConfigError, match=r"broken\.toml: not valid TOML"):
        load_config(p)


def test_overrides_list_and_dict(tmp_path):
    p = _toml(tmp_path, "[vocab]\nsize = 100\n")
    cfg = load_config(p, ["vocab.size=200", "trials.fa_runs=3", "experiment.name=other",
                          "behave.paradigms=['fc']", "behave.fa_temperature=0.5"])
    assert cfg.vocab.size == 200 and cfg.trials.fa_runs == 3
    assert cfg.experiment.name == "other" and cfg.behave.paradigms == ["fc"]
    assert cfg.behave.fa_temperature == 0.5
    cfg = load_config(p, {"vocab.size": 50, "rsa.seed": 7})
    assert cfg.vocab.size == 50 and cfg.rsa.seed == 7


def test_overrides_are_validated(tmp_path):
    p = _toml(tmp_path, "")
    with pytest.raises(ConfigError, match=r"'vocab\.size' = 5 is too small"):
        load_config(p, ["vocab.size=5"])
    with pytest.raises(ConfigError, match=r"unknown key 'trials\.fa_run'; did you mean 'trials\.fa_runs'\?"):
        load_config(p, ["trials.fa_run=3"])
    with pytest.raises(ConfigError, match=r"override 'vocab\.size' for .*use KEY=VALUE"):
        load_config(p, ["vocab.size"])
    with pytest.raises(ConfigError, match=r"'trials\.fc_seed' must be int, got 'abc'"):
        load_config(p, ["trials.fc_seed=abc"])
    with pytest.raises(ConfigError, match=r"override 'experiment\.name\.x' .*'name' is not a section"):
        load_config(p, ["experiment.name.x=1"])


def test_model_lookup(tmp_path):
    cfg = load_config(_toml(tmp_path, "[[models]]\nname = 'a'\npath = 'x'\n"))
    assert cfg.model("a").path == "x"
    with pytest.raises(ConfigError, match=r"exp\.toml: no model named 'b'; models in this config: a"):
        cfg.model("b")
    assert isinstance(cfg, Config)


@pytest.mark.parametrize("picks", [1, 3])
def test_fc_picks_other_than_two_only_for_scored_fc(tmp_path, picks):
    with pytest.raises(ConfigError, match=rf"'trials\.fc_picks' = {picks}: generated FC \('fc' in behave\.paradigms\) "
                                          r"asks for and parses exactly 2 picks.*set trials\.fc_picks = 2.*fc_scored"):
        load_config(_toml(tmp_path, f"[trials]\nfc_picks = {picks}\n"))
    cfg = load_config(_toml(tmp_path, f"[trials]\nfc_picks = {picks}\n[behave]\nparadigms = ['fa', 'fc_scored']\n"))
    assert cfg.trials.fc_picks == picks


def test_paper_config_has_the_authors_tokenizer_fix_and_eos_per_stage():
    """METHOD.md §2 decoding: Mistral tokenizers with fix_mistral_regex as the authors had it
    (Mistral-7B in its FC script only; Mistral-Nemo in FC, FA and hidden states), and the EOS
    sets of the table (Qwen: <|im_end|> and <|endoftext|> in FC; its FA terminators were
    <|im_end|> only; Falcon3 and Qwen FC also <|end_of_turn|> where the tokenizer has it)."""
    cfg = load_config(ROOT / "configs" / "paper.toml")
    m7, nemo = cfg.model("Mistral-7B-Instruct-v0.2"), cfg.model("Mistral-Nemo-Instruct-2407")
    assert [m7.fixes_mistral_regex(s) for s in ("fc", "fa", "hidden")] == [True, False, False]
    assert [nemo.fixes_mistral_regex(s) for s in ("fc", "fa", "fc_scored", "hidden")] == [True] * 4
    assert not cfg.model("Llama-3.1-8B-Instruct").fixes_mistral_regex("fc")
    qwen, falcon = cfg.model("Qwen2.5-7B-Instruct"), cfg.model("Falcon3-10B-Instruct")
    assert set(qwen.eos_for("fc")) == {"<|im_end|>", "<|endoftext|>", "<|end_of_turn|>"}
    assert qwen.eos_for("fa") == ["<|im_end|>"]
    assert set(falcon.eos_for("fa")) == set(falcon.eos_for("fc")) == {"<|endoftext|>", "<|im_end|>",
                                                                      "<|end_of_turn|>", ">>"}
    assert cfg.model("Llama-3.1-8B-Instruct").eos_for("fa") == ["<|eot_id|>"]


@pytest.mark.parametrize("text,ok", [
    ("fix_mistral_regex = true", {"fc": True, "fa": True, "fc_scored": True, "hidden": True}),
    ("fix_mistral_regex = false", {"fc": False, "fa": False, "fc_scored": False, "hidden": False}),
    ("fix_mistral_regex = ['fc', 'hidden']", {"fc": True, "fa": False, "fc_scored": False, "hidden": True}),
])
def test_fix_mistral_regex_shapes(tmp_path, text, ok):
    cfg = load_config(_toml(tmp_path, f"[[models]]\nname = 'm'\npath = 'x'\n{text}\n"))
    assert {s: cfg.models[0].fixes_mistral_regex(s) for s in ok} == ok


@pytest.mark.parametrize("text,pattern", [
    ("fix_mistral_regex = ['fc', 'fx']", r"'models\[0\]\.fix_mistral_regex' has unknown value 'fx' "
                                         r"\(allowed: fc, fa, fc_scored(, \w+)*, hidden\)"),
    ("fix_mistral_regex = 'fc'", r"'models\[0\]\.fix_mistral_regex' must be true, false or a list of stages"),
    ("extra_eos = {fc = ['a'], fx = ['b']}", r"'models\[0\]\.extra_eos' has unknown value 'fx' "
                                             r"\(allowed: fc, fa, fc_scored[^)]*\)"),
    ("extra_eos = {fc = 'a'}", r"'models\[0\]\.extra_eos\.fc' must be a list of str"),
    ("extra_eos = 'a'", r"'models\[0\]\.extra_eos' must be a list of str or a table of paradigm -> list"),
])
def test_per_stage_keys_are_validated(tmp_path, text, pattern):
    with pytest.raises(ConfigError, match=pattern):
        load_config(_toml(tmp_path, f"[[models]]\nname = 'm'\npath = 'x'\n{text}\n"))


def test_extra_eos_list_or_table(tmp_path):
    cfg = load_config(_toml(tmp_path, "[[models]]\nname = 'm'\npath = 'x'\nextra_eos = ['<a>']\n"
                                      "[[models]]\nname = 'n'\npath = 'x'\nextra_eos = {fc = ['<a>', '<b>']}\n"))
    a, b = cfg.models
    assert a.eos_for("fc") == a.eos_for("fa") == ["<a>"]
    assert b.eos_for("fc") == ["<a>", "<b>"] and b.eos_for("fa") == []


def test_config_does_not_import_backends_they_bind_themselves():
    """The backends depend on the config, not the other way round: the config validates
    against the registry the backends hand it (`bind_backends`) at package import."""
    import ast

    import pipeline.backends as backends_pkg
    import pipeline.config as config_mod

    tree = ast.parse(Path(config_mod.__file__).read_text())
    imported = {(n.module or "") + ":" + ",".join(a.name for a in n.names)
                for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert not [i for i in imported if "backends" in i], imported
    assert config_mod._BACKENDS is backends_pkg
    assert "vllm" in config_mod._backends().choices() and "released" not in config_mod._backends().choices()

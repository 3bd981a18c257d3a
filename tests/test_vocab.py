"""Vocabulary: loader error paths, CSV input and the vocab stage (the builder: test_nouns.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline import paths, vocab
from pipeline.cli import build_parser
from pipeline.errors import PipelineError
from pipeline.manifest import Manifest, StaleStageError
from pipeline.options import Options


def _opts(*extra):
    return Options.of(build_parser().parse_args(["vocab", "--config", "test.toml", *extra]))


def _write(tmp_path, name, text):
    p = tmp_path / name
    if isinstance(text, bytes):
        p.write_bytes(text)
    else:
        p.write_text(text)
    return p


# ---------- loader ----------

def test_plain_list(tmp_path):
    assert vocab.load_words(_write(tmp_path, "w.txt", "dog\ncat\ntree\n")) == ["dog", "cat", "tree"]
    assert vocab.load_words(_write(tmp_path, "n.txt", "dog\ncat")) == ["dog", "cat"]
    assert vocab.load_words(_write(tmp_path, "crlf.txt", b"dog\r\ncat\r\n")) == ["dog", "cat"]


def test_csv_uses_word_column(tmp_path):
    p = _write(tmp_path, "stim.csv", "lemma,word,freq\ntime,time,99890\nyear,years,5000\nchild,children,4000\n")
    assert vocab.load_words(p) == ["time", "years", "children"]


def test_csv_without_word_column(tmp_path):
    p = _write(tmp_path, "bad.csv", "lemma,freq\ntime,3\n")
    with pytest.raises(PipelineError, match=r"bad\.csv: line 1: no 'word' column.*lemma, freq"):
        vocab.load_words(p)


def test_csv_errors_report_line_numbers(tmp_path):
    p = _write(tmp_path, "dup.csv", "lemma,word,freq\ntime,time,9\nyear,years,5\ntime,time,1\n")
    with pytest.raises(PipelineError, match=r"dup\.csv: 1 bad vocabulary entry: line 4: duplicate of line 2 \('time'\)"):
        vocab.load_words(p)


def test_blank_lines(tmp_path):
    p = _write(tmp_path, "blank.txt", "dog\n\ncat\n  \n")
    with pytest.raises(PipelineError, match=r"blank\.txt: 2 bad vocabulary entries: line 2: blank entry; line 4: blank entry"):
        vocab.load_words(p)


def test_inner_whitespace(tmp_path):
    p = _write(tmp_path, "ws.txt", "dog\nice cream\ncat\ttail\n")
    with pytest.raises(PipelineError, match=r"ws\.txt: .*line 2: 'ice cream' contains whitespace.*line 3"):
        vocab.load_words(p)


def test_duplicates_and_case_collisions(tmp_path):
    p = _write(tmp_path, "dups.txt", "dog\ncat\ndog\nCat\n")
    with pytest.raises(PipelineError) as e:
        vocab.load_words(p)
    msg = str(e.value)
    assert "dups.txt" in msg
    assert "line 3: duplicate of line 1 ('dog')" in msg
    assert "line 4: 'Cat' differs only in case from 'cat' on line 2" in msg


def test_many_problems_are_summarised(tmp_path):
    p = _write(tmp_path, "many.txt", "dog\n" * 15)
    with pytest.raises(PipelineError, match=r"14 bad vocabulary entries: .*and 4 more"):
        vocab.load_words(p)


def test_missing_empty_and_non_utf8(tmp_path):
    with pytest.raises(PipelineError, match=r"nope\.txt: vocabulary file not found"):
        vocab.load_words(tmp_path / "nope.txt")
    with pytest.raises(PipelineError, match=r"empty\.txt: the vocabulary is empty"):
        vocab.load_words(_write(tmp_path, "empty.txt", ""))
    with pytest.raises(PipelineError, match=r"empty\.csv: the CSV is empty"):
        vocab.load_words(_write(tmp_path, "empty.csv", ""))
    with pytest.raises(PipelineError, match=r"latin\.txt: not UTF-8"):
        vocab.load_words(_write(tmp_path, "latin.txt", "caf\xe9\n".encode("latin-1")))


# ---------- stage ----------

def test_stage_freezes_first_words(make_config):
    cfg = make_config()
    with pytest.raises(PipelineError, match="make vocab CONFIG=test.toml"):
        vocab.load_run_vocab(cfg)
    vocab.run(cfg, _opts())
    source = vocab.load_words(cfg.vocab.source)
    assert vocab.load_run_vocab(cfg) == source[:20]
    assert paths.vocab_file(cfg).read_text() == "\n".join(source[:20]) + "\n"
    man = Manifest(cfg.run_dir).read()
    assert man["stages"]["vocab"]["complete"] and man["stages"]["vocab"]["summary"]["n_words"] == 20
    assert set(man["prompts"]) >= {"fc", "fa", "fc_repair"}
    mtime = paths.vocab_file(cfg).stat().st_mtime_ns
    vocab.run(cfg, _opts())
    assert paths.vocab_file(cfg).stat().st_mtime_ns == mtime


def test_stage_size_none_takes_all(make_config):
    cfg = make_config(vocab={"size": None})
    vocab.run(cfg, _opts())
    assert len(vocab.load_run_vocab(cfg)) == len(vocab.load_words(cfg.vocab.source))


def test_stage_list_too_short(make_config, tmp_path):
    short = _write(tmp_path, "short.txt", "\n".join(f"w{i}" for i in range(18)) + "\n")
    cfg = make_config(vocab={"source": str(short), "size": 20})
    with pytest.raises(PipelineError, match=r"short\.txt: holds 18 words but vocab.size = 20 in test.toml"):
        vocab.run(cfg, _opts())
    assert not paths.vocab_file(cfg).exists()


def test_stage_changed_source_is_stale(make_config, tmp_path):
    cfg = make_config()
    vocab.run(cfg, _opts())
    before = vocab.load_run_vocab(cfg)
    other = _write(tmp_path, "other.txt", "\n".join(f"w{i}" for i in range(30)) + "\n")
    cfg2 = make_config(vocab={"source": str(other)})
    with pytest.raises(StaleStageError, match="--force"):
        vocab.run(cfg2, _opts())
    assert vocab.load_run_vocab(cfg) == before
    assert Manifest(cfg.run_dir).read()["config"]["vocab"]["source"] == cfg.vocab.source
    vocab.run(cfg2, _opts("--force"))
    assert vocab.load_run_vocab(cfg2) == [f"w{i}" for i in range(20)]


def test_stage_rejects_bad_source(make_config, tmp_path):
    bad = _write(tmp_path, "bad.txt", "\n".join(["dog"] * 25) + "\n")
    cfg = make_config(vocab={"source": str(bad)})
    with pytest.raises(PipelineError, match=r"bad\.txt: 24 bad vocabulary entries"):
        vocab.run(cfg, _opts())


def test_cli_vocab_stage(make_config, tmp_path, capsys):
    from pipeline.cli import main

    cfg_file = tmp_path / "c.toml"
    words = tmp_path / "words.txt"
    words.write_text("\n".join(f"w{i}" for i in range(30)) + "\n")
    cfg_file.write_text(f'[experiment]\nname = "v"\ndata_dir = "{tmp_path / "data"}"\n'
                        f'[vocab]\nsource = "{words}"\nsize = 25\n')
    assert main(["vocab", "--config", str(cfg_file)]) == 0
    assert (tmp_path / "data" / "v" / "vocab.txt").read_text().split() == [f"w{i}" for i in range(25)]
    assert main(["vocab", "--config", str(cfg_file), "--set", "vocab.size=40"]) == 2
    assert "holds 30 words but vocab.size = 40" in capsys.readouterr().err


def test_paper_stimuli_ship_and_give_the_authors_first_group(make_config):
    import csv
    import random

    from pipeline import trials

    src = Path(__file__).resolve().parents[1] / "vocab" / "subtlex_stimuli_5k_final.csv"
    words = vocab.load_words(src)
    assert len(words) == 5000 and words[:3] == ["time", "man", "way"]
    with open(src, newline="") as f:
        assert words == [r["word"] for r in csv.DictReader(f)]
    # The authors' procedure for cue 0 (METHOD.md §2), written out: shuffle the other indices
    # with random.Random(12345 + 0), the first of 313 balanced groups holds 16 of them.
    idx = [j for j in range(5000) if j != 0]
    random.Random(12345).shuffle(idx)
    first = [words[j] for j in idx[:16]]
    perm = trials._shuffle_block(5000, 0, 1, 12345)
    sizes = trials.fc_group_sizes(5000, 16)
    assert len(sizes) == 313 and sizes[0] == 16
    assert [words[j] for j in perm[0, :16]] == first
    cfg = make_config(experiment={"name": "p", "data_dir": str(make_config().experiment.data_dir),
                                  "paper_mode": True}, vocab={"source": str(src), "size": 5000})
    vocab.run(cfg, _opts())
    assert vocab.load_run_vocab(cfg) == words


@pytest.mark.parametrize("paper, words, bad", [
    (False, ["dog", "café", "c++", "e-mail", "x.y", "zoë"], "'c\\+\\+', 'x\\.y'"),
    (True, ["dog", "café", "e-mail", "cat"], "'café', 'e-mail'.*paper mode"),
])
def test_stage_refuses_words_the_rules_cannot_match(make_config, tmp_path, paper, words, bad):
    src = tmp_path / "w.txt"
    src.write_text("\n".join(words + [f"pad{c}" for c in "abcdefghijklmnopqrst"]) + "\n")
    cfg = make_config(experiment={"name": "u", "data_dir": str(tmp_path / "d"), "paper_mode": paper},
                      vocab={"source": str(src), "size": None})
    with pytest.raises(PipelineError, match=rf"w\.txt: \d vocabulary words can never be parsed from an answer: {bad}"):
        vocab.run(cfg, _opts())
    assert not paths.vocab_file(cfg).exists()


def test_paper_mode_refuses_na_like_words(make_config, tmp_path):
    src = tmp_path / "w.txt"
    src.write_text("\n".join(["dog", "null"] + [f"pad{c}" for c in "abcdefghijklmnopqrst"]) + "\n")
    cfg = make_config(experiment={"name": "u", "data_dir": str(tmp_path / "d"), "paper_mode": True},
                      vocab={"source": str(src), "size": None})
    with pytest.raises(PipelineError, match="'null': paper mode drops responses that pandas reads as missing"):
        vocab.run(cfg, _opts())


@pytest.mark.parametrize("word", ["nan", "Nan", "NA", "na"])
def test_paper_mode_refuses_words_dropped_after_lowercasing(make_config, tmp_path, word):
    src = tmp_path / "w.txt"
    src.write_text("\n".join(["dog", word] + [f"pad{c}" for c in "abcdefghijklmnopqrst"]) + "\n")
    cfg = make_config(experiment={"name": "u", "data_dir": str(tmp_path / "d"), "paper_mode": True},
                      vocab={"source": str(src), "size": None})
    with pytest.raises(PipelineError, match=rf"'{word}': paper mode drops responses"):
        vocab.run(cfg, _opts())

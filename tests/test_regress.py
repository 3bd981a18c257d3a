"""Held-out-words regression: split and pair arithmetic, pair cosines against
`similarity.centered_cosine`, a synthetic case with a known answer, and the stage."""

from __future__ import annotations

import _synthetic as syn
import numpy as np
import pandas as pd
import pytest
from sklearn.model_selection import train_test_split

from pipeline import paths, regress
from pipeline.manifest import Manifest
from pipeline.options import Options
from pipeline.similarity import centered_cosine, cosine, l2_normalize_rows, sample_pairs

WORDS = [f"w{i:03d}" for i in range(120)]


def test_split_and_pair_arithmetic():
    words = WORDS[::-1][:50]
    valid = np.ones(50, dtype=bool)
    valid[[3, 17]] = False
    split = regress.make_split(words, seed=1, test_size=0.2, train_pairs=300, valid=valid)
    train_w, test_w = train_test_split(sorted(words), test_size=0.2, random_state=1)
    assert [words[i] for i in split.train_idx] == train_w
    assert [words[i] for i in split.test_idx] == test_w
    assert len(split.train_idx) == 40 and len(split.test_idx) == 10
    a, b = sample_pairs(40, 300, 1)
    assert np.array_equal(split.ii_train, split.train_idx[a]) and np.array_equal(split.jj_train, split.train_idx[b])
    train_set, test_set = set(split.train_idx.tolist()), set(split.test_idx.tolist())
    assert not train_set & test_set
    pairs = set(zip(split.ii_train.tolist(), split.jj_train.tolist()))
    assert len(pairs) == 300 and all(i in train_set and j in train_set and i != j for i, j in pairs)
    test_pairs = list(zip(split.ii_test.tolist(), split.jj_test.tolist()))
    assert len(test_pairs) == 45 and len({frozenset(p) for p in test_pairs}) == 45
    assert all(i in test_set and j in test_set for i, j in test_pairs)
    bad = {3, 17}
    assert np.array_equal(split.keep_train, [not ({i, j} & bad) for i, j in pairs_in_order(split)])
    assert np.array_equal(split.keep_test, [not ({i, j} & bad) for i, j in test_pairs])
    assert split.n_dropped == (~split.keep_train).sum() + (~split.keep_test).sum() > 0


def pairs_in_order(split):
    return list(zip(split.ii_train.tolist(), split.jj_train.tolist()))


@pytest.mark.parametrize("centered", [True, False])
def test_pair_cosines_equal_centered_cosine(centered):
    rng = np.random.default_rng(0)
    layer = (rng.standard_normal((60, 9)) + 1.5).astype(np.float16)
    split = regress.make_split(WORDS[:60], seed=0, test_size=0.25, train_pairs=500)
    full = (centered_cosine(layer.astype(np.float64), center_rows=split.train_idx) if centered
            else cosine(layer.astype(np.float64)))
    tr, te = regress.pair_cosines(layer, split, centered)
    assert np.allclose(tr, full[split.ii_train, split.jj_train], atol=2e-6)
    assert np.allclose(te, full[split.ii_test, split.jj_test], atol=2e-6)


def test_consensus_is_mean_over_other_models_and_layers():
    rng = np.random.default_rng(1)
    split = regress.make_split(WORDS[:40], seed=2, test_size=0.2, train_pairs=200)
    stacks = {m: rng.standard_normal((L + 1, 40, 7)).astype(np.float32) for m, L in (("a", 2), ("b", 3), ("c", 1))}
    values = {m: [regress.pair_cosines(s[layer], split) for layer in range(1, s.shape[0])] for m, s in stacks.items()}
    tr, te = regress.consensus_pairs(values, "a")
    mats = [centered_cosine(stacks[m][layer], center_rows=split.train_idx)
            for m in ("b", "c") for layer in range(1, stacks[m].shape[0])]
    expected = np.mean(mats, axis=0)
    assert len(mats) == 4
    assert np.allclose(tr, expected[split.ii_train, split.jj_train], atol=2e-6)
    assert np.allclose(te, expected[split.ii_test, split.jj_test], atol=2e-6)
    with pytest.raises(ValueError, match="two models"):
        regress.consensus_pairs({"a": values["a"]}, "a")


def _unit(x):
    return l2_normalize_rows(x)


def _known_run(make_config, weights, sigma, seed=0):
    """Hidden vectors = concatenated unit blocks [w_s s, w_e e, w_c f, w_a g, sigma noise]: the raw
    cosine is then exactly (w_s² S + w_e² E + w_c² F + w_a² G + sigma² Z) / (sum of squares)."""
    n = 120
    cfg = syn.config(make_config, models=("solo",), n_words=20, vocab={"size": 20},
                     hidden={"strategies": ["meaning"]},
                     regress={"seeds": [seed], "train_pairs": 3000, "cv": 3, "centered": False})
    rng = np.random.default_rng(seed)
    paths.vocab_file(cfg).parent.mkdir(parents=True, exist_ok=True)
    paths.vocab_file(cfg).write_text("\n".join(WORDS[:n]) + "\n")
    blocks = {k: _unit(rng.standard_normal((n, 6)) + 0.8) for k in ("static", "encoder", "fc", "fa")}
    base = paths.baselines_dir(cfg)
    base.mkdir(parents=True)
    np.save(base / "glove.npy", blocks["static"].astype(np.float32))
    np.save(base / "minilm.npy", blocks["encoder"].astype(np.float32))
    for p in ("fc", "fa"):
        d = paths.matrices_dir(cfg, "solo", p)
        d.mkdir(parents=True)
        np.save(d / "sim_counts.npy", cosine(blocks[p]))
    stack = np.zeros((len(weights) + 1, n, 6 * 4 + 40), dtype=np.float32)
    noise = {}
    for layer, w in enumerate(weights, start=1):
        noise[layer] = _unit(rng.standard_normal((n, 40)))
        stack[layer] = np.hstack([w[k] * blocks[k] for k in ("static", "encoder", "fc", "fa")] + [sigma * noise[layer]])
    paths.hidden_file(cfg, "solo", "meaning").parent.mkdir(parents=True)
    np.save(paths.hidden_file(cfg, "solo", "meaning"), stack.astype(np.float16))
    return cfg, noise


def test_known_linear_mix_recovers_analytic_r2(make_config):
    weights = [{"static": 1.0, "encoder": 0.6, "fc": 1.2, "fa": 0.3},
               {"static": 1.0, "encoder": 0.8, "fc": 0.0, "fa": 0.0}]
    sigma = 0.9
    cfg, noise = _known_run(make_config, weights, sigma)
    regress.run(cfg, Options())
    df = pd.read_parquet(paths.results_dir(cfg) / "regression.parquet")
    assert set(df.feature_set) == set(regress.FEATURE_SETS_NO_CONSENSUS)
    assert len(df) == 2 * 4
    split = regress.make_split(WORDS[:120], 0, 0.2, 3000)
    assert df.n_test.unique().tolist() == [276] and df.n_train.unique().tolist() == [3000]
    for layer, w in enumerate(weights, start=1):
        total = sum(v**2 for v in w.values()) + sigma**2
        y_te = regress.pair_cosines(
            np.load(paths.hidden_file(cfg, "solo", "meaning"))[layer], split, centered=False)[1].astype(np.float64)
        z = cosine(noise[layer])[split.ii_test, split.jj_test] * sigma**2 / total
        analytic = 1 - np.sum((z - z.mean()) ** 2) / np.sum((y_te - y_te.mean()) ** 2)
        rows = df[df.layer == layer].set_index("feature_set")
        assert rows.loc["base+fc+fa", "r2_test"] == pytest.approx(analytic, abs=0.03)
        train = rows.r2_train
        assert train["base"] <= train["base+fc"] + 1e-4 <= train["base+fc+fa"] + 2e-4
        assert train["base+fa"] <= train["base+fc+fa"] + 1e-4
    gain = df.pivot_table(index="layer", columns="feature_set", values="r2_test")
    assert gain.loc[1, "base+fc"] - gain.loc[1, "base"] > 0.2
    assert abs(gain.loc[2, "base+fc"] - gain.loc[2, "base"]) < 0.02


def test_stage_with_consensus_counts_drops_and_resumes(make_config):
    cfg = syn.config(make_config, hidden={"strategies": ["task_fc"]}, regress={"seeds": [3], "cv": 2})
    syn.build(cfg, n_layers=2)
    regress.run(cfg, Options())
    df = pd.read_parquet(paths.results_dir(cfg) / "regression.parquet")
    assert len(df) == 2 * 2 * 5
    assert list(regress.FEATURE_SETS) == list(df.feature_set.unique())
    split = regress.make_split(syn.WORDS, 3, 0.2, 150)
    touches = lambda i, j: (i == 5) | (j == 5)  # noqa: E731 (word 5 has no static vector)
    dropped = touches(split.ii_train, split.jj_train).sum() + touches(split.ii_test, split.jj_test).sum()
    assert df.n_dropped.unique().tolist() == [dropped]
    assert (df.n_train + df.n_test + df.n_dropped == 150 + 15).all()
    assert df.r2_train.between(-1, 1).all() and (df.alpha > 0).all()
    man = Manifest(cfg.run_dir)
    assert man.stage("regress")["complete"]
    part = paths.results_dir(cfg) / "parts" / "regression" / "m1" / "task_fc.parquet"
    mtime = part.stat().st_mtime_ns
    regress.run(cfg, Options())
    assert part.stat().st_mtime_ns == mtime


def test_missing_baseline_names_the_file(make_config):
    cfg = syn.config(make_config, models=("solo",), hidden={"strategies": ["meaning"]})
    syn.build(cfg, n_layers=1)
    (paths.baselines_dir(cfg) / "minilm.npy").unlink()
    with pytest.raises(regress.PipelineError, match=r"minilm\.npy.*baselines --config"):
        regress.run(cfg, Options())


def test_consensus_matches_baselines_module(make_config):
    """The pair-wise consensus equals `baselines.consensus(..., center_rows=train words)`."""
    from pipeline.baselines import consensus

    cfg = syn.config(make_config, models=("m1", "m2", "m3"), hidden={"strategies": ["meaning"]})
    syn.build(cfg, n_layers=2)
    split = regress.make_split(syn.WORDS, seed=5, test_size=0.2, train_pairs=200)
    values = {m: regress._layer_values(cfg, m, "meaning", 30, split) for m in ("m1", "m2", "m3")}
    tr, te = regress.consensus_pairs(values, "m2")
    full = consensus(cfg, "meaning", "m2", center_rows=split.train_idx)
    assert np.allclose(tr, full[split.ii_train, split.jj_train], atol=1e-5)
    assert np.allclose(te, full[split.ii_test, split.jj_test], atol=1e-5)


def test_sets_needing_an_unconfigured_paradigm_are_skipped(make_config):
    cfg = syn.config(make_config, behave={"paradigms": ["fc"]}, hidden={"strategies": ["meaning"]},
                     regress={"seeds": [0], "cv": 2})
    syn.build(cfg, n_layers=1)
    regress.run(cfg, Options(model="m1"))
    df = pd.read_parquet(paths.results_dir(cfg) / "regression.parquet")
    assert list(df.feature_set.unique()) == ["base", "base+cross", "base+cross+fc"]
    assert "base+cross+fa" in Manifest(cfg.run_dir).stage("regress/m1/meaning")["summary"]["skipped_sets"]
    assert Manifest(cfg.run_dir).stage("regress") is None


@pytest.mark.parametrize("seed", range(6))
def test_fast_ridge_cv_equals_sklearn_pipeline(seed):
    rng = np.random.default_rng(seed)
    n, p = (3000, 5) if seed % 2 else (257, 3)
    x = rng.standard_normal((n, p)) * rng.uniform(0.01, 5, p) + rng.uniform(-2, 2, p)
    noise = [0.1, 1.0, 30.0][seed % 3]
    y = x @ rng.standard_normal(p) + noise * rng.standard_normal(n)
    if seed == 4:
        x[:, 1] = 2.5
    xt = rng.standard_normal((500, p)) * x.std(axis=0) + x.mean(axis=0)
    yt = xt @ rng.standard_normal(p) + rng.standard_normal(500)
    feats = {f"f{i}": x[:, i] for i in range(p)}
    feats_t = {f"f{i}": xt[:, i] for i in range(p)}
    sets = {"one": ("f0",), "all": tuple(feats)}
    for cv in ((2, 5) if seed < 2 else (3,)):
        fast = regress.fit_sets(feats, y, feats_t, yt, sets, cv, engine="fast")
        ref = regress.fit_sets(feats, y, feats_t, yt, sets, cv, engine="sklearn")
        for a, b in zip(fast, ref):
            assert a["alpha"] == b["alpha"]
            assert a["r2_test"] == pytest.approx(b["r2_test"], abs=1e-9)
            assert a["r2_train"] == pytest.approx(b["r2_train"], abs=1e-9)

"""RSA against scipy and rsatoolbox, NN@k against brute force, bootstrap and split-half
against direct implementations of their documented schemes, and the stage's resume logic."""

from __future__ import annotations

import _synthetic as syn
import numpy as np
import pandas as pd
import pytest

from pipeline import comparison, paths, rsa
from pipeline.errors import PipelineError
from pipeline.manifest import Manifest, StaleStageError
from pipeline.options import Options
from pipeline.similarity import centered_cosine, cosine

# ---------------------------------------------------------------- stage

def test_stage_writes_tables_and_resumes(make_config):
    cfg = syn.config(make_config, rsa={"bootstrap": 5})
    data = syn.build(cfg)
    rsa.run(cfg, Options())
    res = paths.results_dir(cfg)
    df = pd.read_parquet(res / "rsa.parquet")
    n_layers = 4
    assert len(df) == 2 * 2 * n_layers * 5 * 3
    assert set(df.reference) == {"fc", "fa", "static", "encoder", "consensus"}
    assert df.query("reference == 'static'").n_words.unique().tolist() == [29]
    assert df.query("reference == 'fc'").n_words.unique().tolist() == [30]
    row = df.query("model == 'm2' and strategy == 'task_fc' and layer == 3 and reference == 'fa' "
                   "and method == 'spearman'")
    fa = np.load(paths.matrices_dir(cfg, "m2", "fa") / "sim_ppmi.npy")
    h = centered_cosine(data["hidden"]["m2", "task_fc"][3].astype(np.float32))
    assert row.rsa.item() == pytest.approx(comparison.compare(h, fa), abs=1e-5)
    assert (df.ci_low <= df.ci_high).all()
    nn = pd.read_parquet(res / "nn.parquet")
    assert len(nn) == 2 * 2 * n_layers * 5 * 2
    rel = pd.read_parquet(res / "reliability.parquet")
    assert len(rel) == 2 * 2 * 3
    man = Manifest(cfg.run_dir)
    assert man.stage("rsa")["complete"]
    assert man.stage("rsa/m1/meaning")["summary"]["skipped_references"] == {}

    part = paths.results_dir(cfg) / "parts" / "rsa" / "m1" / "meaning.parquet"
    mtime = part.stat().st_mtime_ns
    rsa.run(cfg, Options())
    assert part.stat().st_mtime_ns == mtime

    other = paths.results_dir(cfg) / "parts" / "rsa" / "m2" / "meaning.parquet"
    other_mtime = other.stat().st_mtime_ns
    with Manifest(cfg.run_dir)._locked() as m:
        m["stages"]["rsa/m2/meaning"]["complete"] = False
    rsa.run(cfg, Options())
    assert part.stat().st_mtime_ns == mtime
    assert other.stat().st_mtime_ns != other_mtime
    assert len(pd.read_parquet(res / "rsa.parquet")) == len(df)

    fc_file = paths.matrices_dir(cfg, "m1", "fc") / "sim_ppmi.npy"
    np.save(fc_file, fa)
    with pytest.raises(PipelineError, match=r"sim_ppmi\.npy.*changed since the aggregate/m1/fc stage wrote it.*"
                                            r"aggregate --config test\.toml --model m1 --paradigm fc"):
        rsa.run(cfg, Options())
    man.register([fc_file], "aggregate/m1/fc")  # as if aggregate had rebuilt it from new logs
    rsa.run(cfg, Options())
    new = pd.read_parquet(res / "rsa.parquet").query("model == 'm1' and reference == 'fc'")
    assert not np.allclose(new.rsa, df.query("model == 'm1' and reference == 'fc'").rsa)
    cfg.rsa.nn_k = [3]
    with pytest.raises(StaleStageError):
        rsa.run(cfg, Options())


def test_single_model_skips_consensus_and_narrows_by_model(make_config):
    cfg = syn.config(make_config, models=("solo",), rsa={"methods": ["spearman"], "bootstrap": 0, "nn_k": [3]},
                     hidden={"strategies": ["meaning"]})
    syn.build(cfg)
    rsa.run(cfg, Options(model="solo"))
    df = pd.read_parquet(paths.results_dir(cfg) / "rsa.parquet")
    assert "consensus" not in set(df.reference)
    summary = Manifest(cfg.run_dir).stage("rsa/solo/meaning")["summary"]
    assert "consensus" in summary["skipped_references"]


def test_missing_inputs_name_the_file_and_the_fix(make_config):
    cfg = syn.config(make_config, rsa={"bootstrap": 0}, hidden={"strategies": ["meaning"]})
    syn.build(cfg)
    paths.hidden_file(cfg, "m2", "meaning").unlink()
    with pytest.raises(PipelineError, match=r"m2/meaning\.npy.*hidden --config"):
        rsa.run(cfg, Options())
    (paths.baselines_dir(cfg) / "consensus" / "m1" / "meaning.npy").unlink()
    with pytest.raises(PipelineError, match=r"consensus.*baselines --config"):
        rsa.run(cfg, Options(model="m1"))
    np.save(paths.hidden_file(cfg, "m2", "meaning"), np.zeros((3, 7, 4), dtype=np.float16))
    with pytest.raises(PipelineError, match=r"shape \(3, 7, 4\)"):
        rsa.run(cfg, Options(model="m2"))


def test_paradigm_not_configured_is_skipped_with_a_note(make_config):
    cfg = syn.config(make_config, models=("solo",), behave={"paradigms": ["fc"]}, hidden={"strategies": ["meaning"]},
                     rsa={"methods": ["spearman"], "bootstrap": 0, "nn_k": [3]})
    syn.build(cfg, n_layers=1)
    rsa.run(cfg, Options())
    res = paths.results_dir(cfg)
    assert "fa" not in set(pd.read_parquet(res / "rsa.parquet").reference)
    assert set(pd.read_parquet(res / "reliability.parquet").paradigm) == {"fc"}
    assert "behave.paradigms" in Manifest(cfg.run_dir).stage("rsa/solo/meaning")["summary"]["skipped_references"]["fa"]


from test_analysis import _authors_rsa  # noqa: E402


def _no_valid_fa_answer(cfg, model, cue_idx, words):
    """Rewrite `model`'s FA log so the cue at `cue_idx` has no valid associate, then aggregate."""
    import pyarrow as pa

    from pipeline.aggregate import aggregate_one
    from pipeline.logs import SCHEMA, write_part

    d = paths.behavior_dir(cfg, model, "fa")
    tab = pd.concat([pd.read_parquet(p) for p in sorted(d.glob("part-*"))])
    for p in d.glob("part-*"):
        p.unlink()
    sel = tab.cue_idx == cue_idx
    tab.loc[sel, "picks"] = pd.Series([["null", "??"]] * int(sel.sum()), index=tab.index[sel])
    write_part(d, pa.Table.from_pandas(tab, preserve_index=False).select(SCHEMA.names).cast(SCHEMA))
    aggregate_one(cfg, model, "fa", words)


def test_stage_paper_mode_on_common_words_equals_the_authors_procedure(make_config):

    cfg = syn.config(make_config, models=("m1",), hidden={"strategies": ["meaning"]},
                     experiment={"name": "t", "data_dir": str(make_config().experiment.data_dir), "paper_mode": True},
                     rsa={"methods": ["paper"], "paper_pairs": 300, "bootstrap": 0, "nn_k": [3], "split_half": False})
    data = syn.build(cfg)
    words = data["words"]
    # The FA cue "king" loses every answer: in paper mode it leaves every comparison.
    king = words.index("king")
    _no_valid_fa_answer(cfg, "m1", king, words)
    rsa.run(cfg, Options())
    df = pd.read_parquet(paths.results_dir(cfg) / "rsa.parquet")
    assert set(df.query("reference != 'static'").n_words) == {29}
    assert set(df.query("reference == 'static'").n_words) == {28}  # word 5 has no static vector
    keep = [i for i in range(len(words)) if i != king]
    sub_words = [words[i] for i in keep]
    h = data["hidden"]["m1", "meaning"][2][keep]
    for name in ("fc", "fa"):
        sim = np.load(paths.matrices_dir(cfg, "m1", name) / "sim_ppmi.npy")[np.ix_(keep, keep)]
        got = df.query("reference == @name and layer == 2").rsa.item()
        assert got == pytest.approx(_authors_rsa(h, sim, sub_words, 300, 0), abs=1e-6)
    static = data["static"][keep]
    ok = np.isfinite(static).all(axis=1)
    got = df.query("reference == 'static' and layer == 2").rsa.item()
    assert got == pytest.approx(_authors_rsa(h, cosine(np.where(ok[:, None], static, 0)), sub_words, 300, 0, ok),
                                abs=1e-6)


def test_paper_mode_consensus_is_centred_over_the_targets_common_words(make_config):
    """METHOD.md §5-§6: in paper mode the analysis runs on the target's common words (hidden,
    FC rows, FA rows); the consensus is each other model's centered cosine over those words,
    so its centering mean is theirs too. Here m1 loses one FA cue, the others do not."""


    cfg = syn.config(make_config, models=("m1", "m2", "m3"), hidden={"strategies": ["meaning"]},
                     experiment={"name": "t", "data_dir": str(make_config().experiment.data_dir), "paper_mode": True},
                     rsa={"methods": ["paper"], "paper_pairs": 300, "bootstrap": 0, "nn_k": [3], "split_half": False,
                          "references": ["fc", "fa", "consensus"]})
    data = syn.build(cfg, n_layers=2)
    words = data["words"]
    king = words.index("king")
    _no_valid_fa_answer(cfg, "m1", king, words)
    rsa.run(cfg, Options())
    df = pd.read_parquet(paths.results_dir(cfg) / "rsa.parquet").query("reference == 'consensus'")
    keep = [i for i in range(len(words)) if i != king]
    sub_words = [words[i] for i in keep]
    hid = data["hidden"]
    cons = np.mean([centered_cosine(hid[o, "meaning"][layer][keep].astype(np.float32), dtype=np.float64)
                    for o in ("m2", "m3") for layer in (1, 2)], axis=0)
    for layer in (1, 2):
        got = df.query("model == 'm1' and layer == @layer")
        assert got.n_words.item() == 29
        assert got.rsa.item() == pytest.approx(_authors_rsa(hid["m1", "meaning"][layer][keep], cons, sub_words, 300, 0),
                                               abs=1e-6)
    # m2's common words are all 30: its consensus (all words, from the baselines stage) is unchanged
    full = np.load(paths.consensus_file(cfg, "m2", "meaning"))
    got = df.query("model == 'm2' and layer == 1").rsa.item()
    assert got == pytest.approx(_authors_rsa(hid["m2", "meaning"][1], full, words, 300, 0), abs=1e-6)
# ---------------------------------------------------------------- standardized geometry (issue 21)

def test_standardized_cosine_equals_sklearn_and_undoes_a_rogue_dimension():
    from sklearn.metrics.pairwise import cosine_similarity
    from sklearn.preprocessing import StandardScaler

    from pipeline.similarity import standardized_cosine

    rng = np.random.default_rng(0)
    x = rng.standard_normal((40, 16))
    x[:, 3] = 7.0  # constant: dropped
    ref = cosine_similarity(StandardScaler().fit_transform(x))
    np.testing.assert_allclose(standardized_cosine(x, dtype=np.float64), ref, atol=1e-12)
    np.testing.assert_allclose(standardized_cosine(x, compute=np.float32), ref, atol=1e-5)
    rows = np.arange(30)
    ref_rows = cosine_similarity(StandardScaler().fit(x[rows]).transform(x))
    np.testing.assert_allclose(standardized_cosine(x, rows, dtype=np.float64), ref_rows, atol=1e-12)
    rogue = x.copy()
    rogue[:, 0] = 1000 * rng.standard_normal(40)  # one dimension with a thousand times the variance
    truth = centered_cosine(x[:, 1:], dtype=np.float64)
    tri = np.triu_indices(40, 1)
    assert comparison.compare(centered_cosine(rogue, dtype=np.float64)[tri], truth[tri]) < 0.3
    assert comparison.compare(standardized_cosine(rogue, dtype=np.float64)[tri], truth[tri]) > 0.85


def test_stage_standardized_geometry_rows_beside_centered(make_config):
    from pipeline.similarity import standardized_cosine

    cfg = syn.config(make_config)
    data = syn.build(cfg)
    rsa.run(cfg, Options())
    res = paths.results_dir(cfg)
    centered = pd.read_parquet(res / "rsa.parquet")
    assert set(centered.geometry) == {"centered"}
    cfg.rsa.hidden_geometry = ["centered", "standardized"]
    rsa.run(cfg, Options(force=True))
    both = pd.read_parquet(res / "rsa.parquet")
    assert len(both) == 2 * len(centered) and set(both.geometry) == {"centered", "standardized"}
    key = ["model", "strategy", "layer", "reference", "method"]
    merged = centered.merge(both[both.geometry == "centered"], on=key)
    np.testing.assert_allclose(merged.rsa_x, merged.rsa_y, atol=1e-7)
    row = both.query("model == 'm2' and strategy == 'task_fc' and layer == 3 and reference == 'fa' "
                     "and method == 'spearman' and geometry == 'standardized'")
    fa = np.load(paths.matrices_dir(cfg, "m2", "fa") / "sim_ppmi.npy")
    h = standardized_cosine(data["hidden"]["m2", "task_fc"][3].astype(np.float32))
    assert row.rsa.item() == pytest.approx(comparison.compare(h, fa), abs=1e-5)
    nn = pd.read_parquet(res / "nn.parquet")
    assert set(nn.geometry) == {"centered", "standardized"}
    from pipeline.report import load_results

    assert set(load_results(cfg)["rsa"].geometry) == {"centered"}


def test_hidden_geometry_config_is_checked(make_config):
    from pipeline.config import ConfigError

    with pytest.raises(ConfigError, match="rsa.hidden_geometry"):
        make_config(rsa={"hidden_geometry": ["zscored"]})
    with pytest.raises(ConfigError, match="must include"):
        make_config(rsa={"hidden_geometry": ["standardized"]})


def test_float16_and_float32_hidden_files_read_alike(make_config, tmp_path):
    """Issue 20.7: hidden files are float32 now; float16 ones (hidden.store_dtype, older runs)
    are still read, and give the same RSA up to float16 rounding."""
    got = {}
    for dtype in ("float32", "float16"):
        cfg = syn.config(make_config, experiment={"name": dtype, "data_dir": str(tmp_path / "d")},
                         hidden={"store_dtype": dtype})
        data = syn.build(cfg)
        assert data["hidden"]["m1", "meaning"].dtype == np.dtype(dtype)
        rsa.run(cfg, Options())
        got[dtype] = pd.read_parquet(paths.results_dir(cfg) / "rsa.parquet").rsa.to_numpy()
    np.testing.assert_allclose(got["float16"], got["float32"], atol=5e-3)


def test_paper_pairs_are_drawn_once_per_table(make_config, tmp_path, monkeypatch):
    """Each table that uses the 'paper' method draws its pairs once (`similarity.draw_paper_pairs`)
    and hands them to every comparison; before, `compare` drew them again for every pair of
    matrices and every paradigm (behavior_rsa, behavior_norms, reliability, the validity ceiling)."""
    from pipeline import aggregate, similarity, validity, vocab

    cfg = syn.config(make_config, models=("m1", "m2", {"name": "gpt"}), hidden={"strategies": ["meaning"]},
                     norms=[{"name": "swow", "path": str(tmp_path / "swow.csv")}],
                     rsa={"references": ["fc", "fa", "human:swow"], "bootstrap": 0})
    built = syn.build(cfg, n_layers=2)
    syn.write_swow(tmp_path / "swow.csv", built["words"], built["z"])
    aggregate.run(cfg, Options())
    draws: list[int] = []
    real = similarity.sample_pairs
    monkeypatch.setattr(similarity, "sample_pairs", lambda n, size, seed: (draws.append(size), real(n, size, seed))[1])
    per_table: dict[str, list[int]] = {}
    for name in ("_behavior_rsa", "_behavior_vs_norms", "_reliability"):
        def counted(*a, _f=getattr(rsa, name), _name=name, **kw):
            before = len(draws)
            _f(*a, **kw)
            per_table.setdefault(_name, []).append(len(draws) - before)
        monkeypatch.setattr(rsa, name, counted)
    rsa.run(cfg, Options())
    assert per_table == {"_behavior_rsa": [1], "_behavior_vs_norms": [1, 1, 1], "_reliability": [1, 1, 1]}
    assert pd.read_parquet(paths.result_table(cfg, "behavior_rsa")).query("method == 'paper'").rsa.notna().all()
    before = len(draws)
    rows = validity.ceiling_rows(cfg, vocab.load_run_vocab(cfg))
    assert len(draws) - before == 1 and any(np.isfinite(r["rsa_static"]) for r in rows if r["method"] == "paper")

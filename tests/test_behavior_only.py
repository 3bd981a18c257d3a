"""A behavior-only model (no weights, e.g. behind an API) in every stage after behave: hidden,
baselines, regress and export skip it with one line, rsa gives it no cells but uses its
behavior as the `fc:MODEL` / `fa:MODEL` references and in `behavior_rsa.parquet`, and the
report shows its compliance and its behavioral geometry against the other models."""

from __future__ import annotations

import logging

import _synthetic as syn
import numpy as np
import pandas as pd
import pytest

from pipeline import baselines, behave, comparison, export, hidden, paths, regress, report, rsa, trials, vocab
from pipeline.manifest import Manifest, fingerprint
from pipeline.options import Options
from pipeline.similarity import centered_cosine

REFS = ["fc", "fa", "static", "encoder", "consensus", "fc:gpt", "fa:gpt"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    cfg = syn.config(syn.make_config_at(tmp_path_factory.mktemp("api")), models=("m1", "m2", {"name": "gpt"}),
                     rsa={"references": REFS, "bootstrap": 0}, regress={"seeds": [0], "cv": 2})
    syn.build(cfg, n_layers=3)
    syn.record_behave(cfg, compliance=(0.97, 0.66))
    return cfg


@pytest.fixture(scope="module")
def analysed(run):
    for stage in (rsa, regress, report):
        stage.run(run, Options())
    return run


def test_rsa_has_no_cells_for_it_but_uses_its_behavior_as_reference(analysed, caplog):
    cfg = analysed
    df = pd.read_parquet(paths.result_table(cfg, "rsa"))
    assert set(df.model) == {"m1", "m2"} and set(df.reference) == set(REFS)
    gpt_fc = np.load(paths.matrix_file(cfg, "gpt", "fc", "sim_ppmi"))
    valid = ~np.isnan(gpt_fc).all(axis=1)
    stack = np.load(paths.hidden_file(cfg, "m1", "meaning"))
    h = centered_cosine(stack[2].astype(np.float32), compute=np.float32)
    keep = np.outer(valid, valid)
    expected = comparison.compare(np.where(keep, h, np.nan), np.where(keep, gpt_fc, np.nan), "spearman")
    got = df.query("model == 'm1' and strategy == 'meaning' and layer == 2 and reference == 'fc:gpt' "
                   "and method == 'spearman'").rsa.item()
    assert got == pytest.approx(expected, abs=1e-5)
    own = df.query("model == 'm1' and strategy == 'meaning' and layer == 2 and reference == 'fc' "
                   "and method == 'spearman'").rsa.item()
    assert own != pytest.approx(got)
    rel = pd.read_parquet(paths.result_table(cfg, "reliability"))
    assert {"m1", "m2", "gpt"} == set(rel.model)
    assert Manifest(cfg.run_dir).stage("rsa")["complete"]
    with caplog.at_level(logging.INFO, logger="pipeline.rsa"):
        rsa.run(cfg, Options())
    lines = [r.getMessage() for r in caplog.records if "gpt" in r.getMessage()]
    assert len(lines) == 1 and "behavior-only" in lines[0]


def test_behavior_rsa_compares_every_pair_of_models(analysed):
    cfg = analysed
    beh = pd.read_parquet(paths.result_table(cfg, "behavior_rsa"))
    pairs = {("m1", "m2"), ("m1", "gpt"), ("m2", "gpt")}
    assert set(zip(beh.model_a, beh.model_b)) == pairs
    assert len(beh) == 3 * 2 * 3 and set(beh.method) == {"spearman", "pearson", "paper"}
    words = syn.WORDS[:cfg.vocab.size]
    for paradigm in ("fc", "fa"):
        a = np.load(paths.matrix_file(cfg, "m2", paradigm, "sim_ppmi"))
        b = np.load(paths.matrix_file(cfg, "gpt", paradigm, "sim_ppmi"))
        valid = ~np.isnan(a).all(axis=1) & ~np.isnan(b).all(axis=1)
        sub = np.ix_(valid, valid)
        row = beh.query(f"paradigm == '{paradigm}' and model_a == 'm2' and model_b == 'gpt'").set_index("method")
        assert row.loc["spearman", "rsa"] == pytest.approx(comparison.compare(a[sub], b[sub], "spearman"), abs=1e-9)
        assert row.loc["pearson", "rsa"] == pytest.approx(comparison.compare(a[sub], b[sub], "pearson"), abs=1e-6)
        k = int(valid.sum())
        assert row.loc["spearman", "n_words"] == k and row.loc["spearman", "n_pairs"] == k * (k - 1) // 2
        paper = comparison.compare(np.where(np.outer(valid, valid), a, np.nan),
                                   np.where(np.outer(valid, valid), b, np.nan), "paper", n_pairs=200, seed=0,
                                   words=words)
        assert row.loc["paper", "rsa"] == pytest.approx(paper, abs=1e-6)
    assert beh.query("method == 'spearman'").rsa.min() > 0.1  # the models share one latent geometry


def test_behavior_rsa_is_recomputed_only_when_a_matrix_changes(make_config):
    cfg = syn.config(make_config, models=("m1", {"name": "gpt"}), hidden={"strategies": ["meaning"]},
                     rsa={"methods": ["spearman"], "bootstrap": 0, "split_half": False})
    syn.build(cfg, n_layers=2)
    rsa.run(cfg, Options())
    out = paths.result_table(cfg, "behavior_rsa")
    before = pd.read_parquet(out)
    mtime = out.stat().st_mtime_ns
    rsa.run(cfg, Options())
    assert out.stat().st_mtime_ns == mtime
    path = paths.matrix_file(cfg, "gpt", "fa", "sim_ppmi")
    m = np.load(path)
    m[0, 1:] = m[1:, 0] = m[0, 1:][::-1]
    np.save(path, m)
    Manifest(cfg.run_dir).register([path], "aggregate/gpt/fa")
    rsa.run(cfg, Options())
    after = pd.read_parquet(out)
    assert out.stat().st_mtime_ns != mtime
    assert after.query("paradigm == 'fc'").rsa.tolist() == before.query("paradigm == 'fc'").rsa.tolist()
    assert after.query("paradigm == 'fa'").rsa.item() != before.query("paradigm == 'fa'").rsa.item()


def test_regress_skips_it_and_keeps_the_consensus_of_the_open_models(analysed):
    df = pd.read_parquet(paths.result_table(analysed, "regression"))
    assert set(df.model) == {"m1", "m2"}
    assert list(regress.FEATURE_SETS) == list(df.feature_set.unique())
    assert Manifest(analysed.run_dir).stage("regress")["complete"]


def test_report_shows_its_compliance_and_behavioral_geometry(analysed):
    cfg = analysed
    md = (paths.report_dir(cfg) / "report.md").read_text()
    assert "Behavior-only models (no weights, answered through an API): gpt." in md
    comp = md.split("## Behavioral compliance", 1)[1].split("## ", 1)[0]
    assert "| gpt | fc | 100 | 0.970 |" in comp and "| gpt | fa | 100 | 0.660 |" in comp
    section = md.split("## Behavioral geometry across models (Spearman ρ)", 1)[1].split("\n## ", 1)[0]
    fc = section.split("**FC**", 1)[1].split("**FA**", 1)[0]
    rows = [line for line in fc.splitlines() if line.startswith("| ") and not line.startswith("| model")]
    assert [r.split("|")[1].strip() for r in rows] == ["m1", "m2", "gpt (API)"]
    beh = pd.read_parquet(paths.result_table(cfg, "behavior_rsa")).query("paradigm == 'fc' and method == 'spearman'")
    value = beh.query("model_a == 'm1' and model_b == 'gpt'").rsa.item()
    cells = [c.strip() for c in rows[0].split("|")[1:-1]]
    assert cells[3] == f"{value:.3f}"
    rel = pd.read_parquet(paths.result_table(cfg, "reliability")).query(
        "model == 'm1' and paradigm == 'fc' and method == 'spearman'")
    assert cells[1] == f"{rel.reliability.item():.3f}"
    mean = md.split("## RSA, mean over layers (Spearman", 1)[1].split("\n## ", 1)[0]
    assert "| fc:gpt | fa:gpt |" in mean
    assert (paths.report_dir(cfg) / "rsa_by_layer.png").stat().st_size > 10_000


def test_hidden_and_export_skip_it(analysed, caplog):
    cfg = analysed
    with caplog.at_level(logging.INFO):
        _, todo, _ = hidden.pending(cfg, Options())
        export.run(cfg, Options(hidden=True, layers=None))
    assert {m for m, _, _ in todo} <= {"m1", "m2"}
    assert any("hidden gpt: behavior-only model" in r.getMessage() for r in caplog.records)
    assert any("export gpt: behavior-only model" in r.getMessage() for r in caplog.records)
    exported = {p.name.split(".")[0] for p in (paths.export_dir(cfg) / "gpt").iterdir()}
    assert {"fc_ppmi", "fa_ppmi"} <= exported and not any(e.startswith("hidden") for e in exported)
    assert any(p.name.startswith("hidden") for p in (paths.export_dir(cfg) / "m1").iterdir())


def test_consensus_leaves_it_out(make_config, caplog):
    cfg = make_config(models=[{"name": "a", "path": "x"}, {"name": "gpt"}, {"name": "b", "path": "y"}],
                      hidden={"strategies": ["meaning"]}, baselines={"static": None, "encoder": None})
    n = 6
    paths.vocab_file(cfg).parent.mkdir(parents=True, exist_ok=True)
    paths.vocab_file(cfg).write_text("\n".join(f"w{i}" for i in range(n)) + "\n")
    rng = np.random.default_rng(0)
    man = Manifest(cfg.run_dir)
    stacks = {}
    for name in ("a", "b"):
        stacks[name] = rng.standard_normal((3, n, 4)).astype(np.float16)
        path = paths.hidden_file(cfg, name, "meaning")
        path.parent.mkdir(parents=True, exist_ok=True)
        np.save(path, stacks[name])
        man.complete(f"hidden/{name}/meaning", fingerprint(name))
    with caplog.at_level(logging.INFO, logger="pipeline.baselines"):
        baselines.run(cfg, Options())
    expected = np.mean([centered_cosine(stacks["b"][layer].astype(np.float32)) for layer in (1, 2)], axis=0)
    np.testing.assert_allclose(np.load(paths.consensus_file(cfg, "a", "meaning")), expected, atol=1e-5)
    assert not paths.consensus_file(cfg, "gpt", "meaning").exists()
    assert sum("gpt" in r.getMessage() for r in caplog.records) == 1
    solo = make_config(models=[{"name": "a", "path": "x"}, {"name": "gpt"}], hidden={"strategies": ["meaning"]},
                       baselines={"static": None, "encoder": None})
    baselines.run(solo, Options())
    assert Manifest(solo.run_dir).summary("baselines/consensus")["available"] is False


def test_behave_runs_a_model_without_a_path(make_config):
    cfg = make_config(models=[{"name": "gpt"}])
    vocab.run(cfg, Options())
    trials.run(cfg, Options())
    behave.run(cfg, Options())
    summary = Manifest(cfg.run_dir).summary("behave/gpt/fc")
    assert summary["compliance"] == 1.0 and summary["requests"] == summary["n_trials"]
    assert summary["last_run"]["requests_per_s"] > 0 and "backend" not in summary["last_run"]


def test_an_api_model_beside_fc_scored_skips_it_in_every_stage(make_config, caplog):
    api = {"name": "gpt", "backend": "openai", "base_url": "http://127.0.0.1:9/v1"}
    cfg = syn.config(make_config, models=("m1", "m2", api), behave={"paradigms": ["fc", "fa", "fc_scored"]},
                     hidden={"strategies": ["meaning"]}, regress={"seeds": [0], "cv": 2},
                     rsa={"references": ["fc", "fa", "fc_scored", "static", "fc:gpt"], "bootstrap": 0})
    syn.build(cfg, n_layers=2)
    syn.record_behave(cfg)
    assert not paths.behavior_dir(cfg, "gpt", "fc_scored").exists()
    with caplog.at_level(logging.INFO):
        for stage in (rsa, regress, report):
            stage.run(cfg, Options())
    df = pd.read_parquet(paths.result_table(cfg, "rsa"))
    assert set(df.reference) == {"fc", "fa", "fc_scored", "static", "fc:gpt"} and set(df.model) == {"m1", "m2"}
    rel = pd.read_parquet(paths.result_table(cfg, "reliability"))
    assert set(rel.query("model == 'gpt'").paradigm) == {"fc", "fa"}
    assert set(rel.query("model == 'm1'").paradigm) == {"fc", "fa", "fc_scored"}
    beh = pd.read_parquet(paths.result_table(cfg, "behavior_rsa"))
    assert set(zip(beh.query("paradigm == 'fc_scored'").model_a, beh.query("paradigm == 'fc_scored'").model_b)) == \
        {("m1", "m2")}
    assert "base+cross+fc_scored" in set(pd.read_parquet(paths.result_table(cfg, "regression")).feature_set)
    assert (paths.report_dir(cfg) / "report.md").exists()

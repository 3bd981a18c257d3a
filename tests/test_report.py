"""End to end on a synthetic run (N = 30): rsa -> regress -> report -> export, then the
report's files, tables and headline checked against the result tables."""

from __future__ import annotations

import re

import _synthetic as syn
import numpy as np
import pandas as pd
import pytest

from pipeline import export, paths, regress, report, rsa, validity
from pipeline.errors import PipelineError
from pipeline.manifest import Manifest
from pipeline.options import Options


def _table(md: str, heading: str) -> pd.DataFrame:
    """Parse the first Markdown table after a heading that starts with `heading`."""
    lines = md.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"## {heading}"))
    rows = []
    for line in lines[start + 1:]:
        if line.startswith("## ") or (rows and not line.startswith("|")):
            break
        if line.startswith("|") and not line.startswith("|---"):
            rows.append([c.strip() for c in line.strip("|").split("|")])
    return pd.DataFrame(rows[1:], columns=rows[0])


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    cfg = syn.config(syn.make_config_at(tmp_path_factory.mktemp("e2e")), regress={"seeds": [0], "cv": 2},
                     rsa={"bootstrap": 10})
    syn.build(cfg, n_layers=3)
    syn.record_behave(cfg, compliance=(0.93, 0.71))
    for stage in (rsa, validity, regress, report, export):
        stage.run(cfg, Options())
    return cfg


def test_end_to_end_files_tables_and_headline(run_dir):
    cfg = run_dir
    out = paths.report_dir(cfg)
    for name in report.FIGURES:
        data = (out / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    md = (out / "report.md").read_text()
    res = report.load_results(cfg)
    rsa_df = res["rsa"]

    mean = _table(md, "RSA, mean over layers (Spearman")
    d = rsa_df[rsa_df.method == "spearman"]
    for row in mean[mean.model != "mean over models"].itertuples():
        for ref in ("fc", "fa", "static", "encoder", "consensus"):
            expected = d[(d.model == row.model) & (d.strategy == row.strategy) & (d.reference == ref)].rsa.mean()
            assert float(getattr(row, ref)) == pytest.approx(expected, abs=6e-4)
    assert len(mean) == 4 + 2
    assert "mean over models" in set(mean.model)

    peak = _table(md, "Peak RSA")
    for row in peak.itertuples():
        g = d[(d.model == row.model) & (d.strategy == row.strategy) & (d.reference == "fc")]
        best = g.loc[g.rsa.idxmax()]
        assert row.fc == f"{best.rsa:.3f} @ {int(best.layer)}/3"

    fcfa = _table(md, "FC vs FA")
    wins = sum(float(x) > 0 for x in fcfa["fc − fa"])
    assert f"**{wins}/4**" in md

    rel = _table(md, "Split-half reliability")
    assert len(rel) == 2 * 2 * 3
    assert set(rel.paradigm) == {"fc", "fa"}

    reg = _table(md, "Held-out-words regression")
    r = res["regression"]
    for row in reg[reg.model != "mean"].itertuples():
        g = r[(r.model == row.model) & (r.strategy == row.strategy)]
        for s in regress.FEATURE_SETS:
            assert float(reg.loc[row.Index, s]) == pytest.approx(g[g.feature_set == s].r2_test.mean(), abs=6e-5)
        full = g[g.feature_set == "base+cross+fc+fa"].set_index("layer").r2_test
        peak_layer = int(full.idxmax())
        assert int(row.peak_layer) == peak_layer
        at = g[g.layer == peak_layer].set_index("feature_set").r2_test
        assert float(row.fc_gain_peak) == pytest.approx(at["base+cross+fc"] - at["base+cross"], abs=6e-5)

    comp = _table(md, "Behavioral compliance")
    assert set(comp.compliance) == {"0.930", "0.710"}

    head = report.headline(cfg)
    assert head["FC compliance"].startswith("93.0% (m1)")
    assert head["FA compliance"].startswith("71.0% (m1)")
    best = d[d.reference == "fa"].loc[d[d.reference == "fa"].rsa.idxmax()]
    assert head["best-layer RSA FA"].startswith(f"{best.rsa:.3f} spearman ({best.model}/{best.strategy}, layer "
                                                f"{int(best.layer)}/3")
    summary, _ = report.regression_summary(r)
    gain = re.match(r"([+-]\d\.\d{4}) over base\+cross", head["regression R² gain FC"])
    assert float(gain.group(1)) == pytest.approx(summary.fc_gain_peak.mean(), abs=6e-5)
    assert all(f"**{k}**: {v}" in md for k, v in head.items())
    assert Manifest(cfg.run_dir).stage("report")["complete"]

    exported = sorted(p.name for p in (paths.export_dir(cfg) / "m2").iterdir())
    assert exported == sorted(f"{p}_{k}.{f}" for p in ("fc", "fa") for k in export.KINDS for f in export.FORMATS)


def test_report_is_rebuilt_only_when_results_change(run_dir):
    """Runs last in this module: it changes the shared run's results."""
    cfg = run_dir
    md = paths.report_dir(cfg) / "report.md"
    mtime = md.stat().st_mtime_ns
    report.run(cfg, Options())
    assert md.stat().st_mtime_ns == mtime
    (paths.results_dir(cfg) / "rsa.parquet").unlink()
    rsa.run(cfg, Options())  # rebuilds the same table: the report has nothing new to show
    report.run(cfg, Options())
    assert md.stat().st_mtime_ns == mtime
    cfg.rsa.nn_k = [3]
    rsa.run(cfg, Options(force=True))
    report.run(cfg, Options())
    assert md.stat().st_mtime_ns != mtime


def test_single_model_report_without_regression(make_config):
    cfg = syn.config(make_config, models=("solo",), hidden={"strategies": ["meaning"]},
                     rsa={"methods": ["paper"], "bootstrap": 0, "nn_k": [4]})
    with pytest.raises(PipelineError, match="no results to report"):
        report.run(cfg, Options())
    syn.build(cfg, n_layers=2)
    rsa.run(cfg, Options())
    report.run(cfg, Options())
    out = paths.report_dir(cfg)
    assert (out / "rsa_by_layer.png").exists() and (out / "nn_overlap.png").exists()
    assert not (out / "regression_by_layer.png").exists()
    head = report.headline(cfg)
    assert head["regression R²"].startswith("n/a")
    assert head["FC compliance"].startswith("n/a")
    assert "paper" in head["best-layer RSA FC"]
    md = (out / "report.md").read_text()
    assert "consensus" not in _table(md, "RSA, mean over layers").columns


def test_regression_gains_over_baseline_without_consensus():
    rows = []
    for layer, vals in ((1, {"base": 0.2, "base+fc": 0.5, "base+fa": 0.25, "base+fc+fa": 0.55}),
                        (2, {"base": 0.4, "base+fc": 0.45, "base+fa": 0.4, "base+fc+fa": 0.6})):
        for s, v in vals.items():
            for seed, eps in ((0, 0.01), (1, -0.01)):
                rows.append({"model": "m", "strategy": "s", "layer": layer, "seed": seed, "feature_set": s,
                             "r2_test": v + eps})
    summary, names = report.regression_summary(pd.DataFrame(rows))
    assert names["reference"] == "base" and names["full"] == "base+fc+fa"
    row = summary.iloc[0]
    assert row.peak_layer == 2
    assert row.fc_gain_peak == pytest.approx(0.05)
    assert row.fa_gain_peak == pytest.approx(0.0)
    assert row.fc_gain_mean == pytest.approx((0.3 + 0.05) / 2)
    assert row["base+fc+fa"] == pytest.approx(0.575)
    assert np.isfinite(row.peak_r2)


def test_no_matching_model_says_so_in_one_line(run_dir):
    md = (paths.report_dir(run_dir) / "report.md").read_text()
    section = md.split("## This run vs published", 1)[1].split("## ", 1)[0].strip().splitlines()
    assert len(section) == 1 and section[0].startswith("No model of this run is one of the paper's models")


def test_paper_model_gets_published_overlay_and_table(make_config):
    from pipeline import published

    cfg = syn.config(make_config, models=("Llama-3.1-8B-Instruct", "other"), hidden={"strategies": ["meaning"]},
                     rsa={"methods": ["spearman", "paper"], "bootstrap": 0, "nn_k": [5, 10]},
                     regress={"seeds": [0], "cv": 2})
    syn.build(cfg, n_layers=3)
    for stage in (rsa, regress, report):
        stage.run(cfg, Options())
    assert published.match(cfg.models) == {"Llama-3.1-8B-Instruct": "Llama-3.1-8B-Instruct"}
    summary = Manifest(cfg.run_dir).summary("report")
    assert summary["published_curves"] == 5  # fc, fa, static, encoder, consensus for the one matched panel
    md = (paths.report_dir(cfg) / "report.md").read_text()
    table = _table(md, "This run vs published")
    assert set(table.model) == {"Llama-3.1-8B-Instruct"} and set(table.reference) == {
        "fc", "fa", "static", "encoder", "consensus"}
    pub = published.rsa().query("paper_model == 'Llama-3.1-8B-Instruct' and strategy == 'meaning'")
    mine = pd.read_parquet(paths.results_dir(cfg) / "rsa.parquet").query(
        "model == 'Llama-3.1-8B-Instruct' and method == 'paper'")
    for row in table.itertuples():
        theirs = pub[pub.reference == row.reference].rsa.mean()
        ours = mine[mine.reference == row.reference].rsa.mean()
        assert float(row.published) == pytest.approx(theirs, abs=6e-4)
        assert float(row.difference) == pytest.approx(ours - theirs, abs=1e-3)
    assert "### Regression, mean test R² over layers" in md and "### NN@k overlap" in md


def test_report_refuses_results_older_than_the_settings_naming_the_stage(tmp_path):
    from pipeline import aggregate
    from pipeline.config import from_dict

    cfg = syn.config(syn.make_config_at(tmp_path), models=("m1",), hidden={"strategies": ["meaning"]},
                     rsa={"bootstrap": 0, "split_half": False}, regress={"seeds": [0], "cv": 2})
    built = syn.build(cfg, n_layers=2)
    for stage in (rsa, regress, report):
        stage.run(cfg, Options())
    raw = cfg.to_dict()
    raw["norms"] = [{"name": "swow", "path": str(tmp_path / "swow.csv")}]
    raw["rsa"]["references"] = [*raw["rsa"]["references"], "human:swow"]
    raw["models"] = [{k: v for k, v in m.items() if v is not None} for m in raw["models"]]
    with_norms = from_dict(raw, source="with-norms.toml")
    syn.write_swow(tmp_path / "swow.csv", built["words"], built["z"])
    aggregate.run(with_norms, Options())
    with pytest.raises(PipelineError, match=r"results/rsa\.parquet.*other settings.*python -m pipeline rsa --config "
                                            r"with-norms\.toml --force"):
        report.run(with_norms, Options())
    rsa.run(with_norms, Options(force=True))
    with pytest.raises(PipelineError, match=r"results/regression\.parquet.*python -m pipeline regress --config "
                                            r"with-norms\.toml --force"):
        report.run(with_norms, Options())
    regress.run(with_norms, Options(force=True))
    report.run(with_norms, Options())
    assert "human:swow" in set(pd.read_parquet(paths.result_table(cfg, "rsa")).reference)


def test_norms_coverage_prints_counts_as_integers(make_config):
    cfg = make_config(norms=[{"name": "swow", "path": "a.csv"}, {"name": "mine", "path": "b.csv"}])
    man = Manifest(cfg.run_dir)
    man.complete("norms/swow", "x", {"format": "strength", "covered": 3, "masked_rows": 1, "coverage": 0.75,
                                     "picks": 320.0, "missing_words": ["tree"]})
    man.complete("norms/mine", "y", {"format": "counts", "covered": 4, "masked_rows": 0, "coverage": 1.0,
                                     "picks": 12.5, "missing_words": []})
    table = "\n".join(report._norms_section(cfg, {}))
    assert "| human:swow | strength | 3 | 4 | 0.750 | 320 | tree |" in table
    assert "| human:mine | counts | 4 | 4 | 1.000 | 12.500 | – |" in table


@pytest.mark.parametrize("table, damage", [("rsa", "truncate"), ("regression", "truncate"), ("nn", "foreign"),
                                           ("regression", "foreign_unregistered")])


def test_truncated_or_foreign_result_table_is_named_with_the_stage_that_rebuilds_it(tmp_path, table, damage):
    import shutil

    src = syn.config(syn.make_config_at(tmp_path), regress={"seeds": [0], "cv": 2}, rsa={"bootstrap": 0})
    syn.build(src, n_layers=2)
    syn.record_behave(src)
    for stage in (rsa, regress):
        stage.run(src, Options())
    path = paths.result_table(src, table)
    if damage == "truncate":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    else:
        shutil.copy(paths.result_table(src, "reliability"), path)
        if damage == "foreign_unregistered":
            data = Manifest(src.run_dir).read()
            data["artifacts"].pop(Manifest(src.run_dir).rel(path))
            (src.run_dir / "manifest.json").write_text(__import__("json").dumps(data))
    stage = "regress" if table == "regression" else "rsa"
    with pytest.raises(PipelineError, match=rf"{table}\.parquet: .*rebuild it with `python -m pipeline {stage} "):
        report.run(src, Options())


def test_overlay_compares_like_with_like(make_config):
    """The published curves are Pearson on 500,000 sampled pairs (the `paper` method): the
    figure that draws them draws the run's `paper` RSA, even when Spearman is the run's main
    method; a run without it, or a regression without consensus, says it is not comparable."""
    cfg = syn.config(make_config, models=("Llama-3.1-8B-Instruct", "other"), hidden={"strategies": ["meaning"]},
                     rsa={"methods": ["spearman", "paper"], "bootstrap": 0, "nn_k": [5]},
                     regress={"seeds": [0], "cv": 2})
    syn.build(cfg, n_layers=2)
    for stage in (rsa, regress, report):
        stage.run(cfg, Options())
    summary = Manifest(cfg.run_dir).summary("report")
    assert summary["rsa_by_layer_method"] == "paper" and summary["published_curves"] == 5
    md = (paths.report_dir(cfg) / "report.md").read_text()
    assert "not like-for-like" not in md and "not comparable" not in md

    solo = syn.config(make_config, models=("Llama-3.1-8B-Instruct",), hidden={"strategies": ["meaning"]},
                      experiment={"name": "solo", "data_dir": str(make_config().experiment.data_dir)},
                      rsa={"methods": ["spearman"], "bootstrap": 0, "nn_k": [5]}, regress={"seeds": [0], "cv": 2})
    syn.build(solo, n_layers=2)
    for stage in (rsa, regress, report):
        stage.run(solo, Options())
    assert Manifest(solo.run_dir).summary("report")["rsa_by_layer_method"] == "spearman"
    section = (paths.report_dir(solo) / "report.md").read_text().split("## This run vs published", 1)[1]
    assert "not like-for-like" in section
    assert "Regression: not comparable" in section and "consensus" in section


def test_svd_ablation_section_figure_and_published_overlay(make_config):
    from pipeline import published

    cfg = syn.config(make_config, models=("Llama-3.1-8B-Instruct", "other"),
                     hidden={"strategies": ["meaning", "task_fa"]},
                     rsa={"methods": ["paper"], "bootstrap": 0, "nn_k": [5], "split_half": False,
                          "svd_variants": True})
    syn.build(cfg, n_layers=2)
    rsa.run(cfg, Options())
    report.run(cfg, Options())
    out = paths.report_dir(cfg)
    assert (out / report.SVD_FIGURE).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # 2 paradigms x 2 strategies x 8 variants of the one paper model, dashed
    assert Manifest(cfg.run_dir).summary("report")["published_svd_curves"] == 32
    md = (out / "report.md").read_text()
    svd = pd.read_parquet(paths.result_table(cfg, "svd_variants"))
    table = _table(md, "SVD / weighting ablation")
    assert len(table) == 2 * 2 * 2
    for row in table.itertuples():
        d = svd[(svd.model == row.model) & (svd.strategy == row.strategy) & (svd.paradigm == row.paradigm)]
        assert float(row.svd100_ppmi) == pytest.approx(d[d.variant == "svd100_ppmi"].rsa.mean(), abs=6e-4)
    assert "100 → 29, 300 → 29, 600 → 29" in md  # 30 words: every SVD clipped, and said so
    section = md.split("## SVD / weighting ablation", 1)[1].split("## ", 1)[0]
    pub = published.svd_variants().query("paper_model == 'Llama-3.1-8B-Instruct' and strategy == 'task_fa' "
                                         "and paradigm == 'fa' and variant == 'ppmi'").rsa.mean()
    assert f"{pub:.3f}" in section

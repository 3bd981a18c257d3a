"""Human association norms: SWOW's CSV layout and a plain cue,response,count table (files the
tests write themselves; no norms are shipped), restriction to the vocabulary, coverage,
masking of words without norms, config validation, and an end-to-end synthetic run
(aggregate -> rsa -> regress -> report) with scored FC and a synthetic SWOW file beside
FC and FA."""

from __future__ import annotations

import json
import logging

import _synthetic as syn
import numpy as np
import pandas as pd
import pytest

from pipeline import aggregate, paradigms, paths, regress, report, rsa
from pipeline.comparison import compare
from pipeline.config import ConfigError, NormsCfg
from pipeline.errors import PipelineError
from pipeline.manifest import Manifest
from pipeline.norms import count_norms, detect, import_norms
from pipeline.options import Options
from pipeline.similarity import centered_cosine

WORDS = ["dog", "cat", "house", "tree"]

SWOW = ('"","id","participantID","cue","R1","R2","R3"\n'
        '"1",1,10,"dog","cat","Bone",NA\n'
        '"2",2,11,"dog","cat","","No more responses"\n'
        '"3",3,12,"Cat","dog","mouse","NA"\n'
        '"4",4,13,"zebra","stripes",NA,NA\n'
        '"5",5,14,"house","house","home, sweet",NA\n'
        '"6",6,15,"house ","Unknown word",NA,NA\n')


def _counts(path, words=WORDS, **kw):
    norms = NormsCfg("n", str(path), **kw)
    counts, cols, stats = count_norms(path, detect(path, norms), words)
    return {c: dict((cols[j], counts[i, j]) for j in counts[i].indices) for i, c in enumerate(words)}, stats


def test_swow_layout(tmp_path):
    path = tmp_path / "swow.csv"
    path.write_text(SWOW)
    got, st = _counts(path)
    assert got == {"dog": {"cat": 2, "bone": 1}, "cat": {"dog": 1, "mouse": 1}, "house": {"home, sweet": 1},
                   "tree": {}}
    assert st["rows"] == 6 and st["rows_outside_vocabulary"] == 1
    assert st["missing_responses"] == 6  # NA x4, "No more responses", "Unknown word"
    assert st["dropped_cue_repeats"] == 1 and st["dropped_invalid"] == 2  # "" and the quoted string "NA"
    assert st["covered"] == 3 and st["coverage"] == 0.75 and st["masked_row_words"] == ["tree"]
    assert st["cues_in_file"] == 5


def test_swow_first_responses_only(tmp_path):
    path = tmp_path / "swow.csv"
    path.write_text(SWOW)
    got, _ = _counts(path, responses=["R1"])
    assert got == {"dog": {"cat": 2}, "cat": {"dog": 1}, "house": {}, "tree": {}}


def test_counts_layout_tab_separated(tmp_path):
    path = tmp_path / "norms.tsv"
    path.write_text("Cue\tResponse\tCount\ndog\tcat\t3\ndog\tcat\t2\ncat\tNA\t4\ntree\tleaf\t1.5\nmoon\tsun\t2\n"
                    "café\tcoffee\t2\n")
    got, st = _counts(path, words=[*WORDS, "cafe\u0301"])
    assert got == {"dog": {"cat": 5.0}, "cat": {}, "house": {}, "tree": {"leaf": 1.5},
                   "cafe\u0301": {"coffee": 2.0}}
    assert st["rows_outside_vocabulary"] == 1 and st["missing_responses"] == 1 and st["covered"] == 3


STRENGTH = ("cue\tresponse\tR123\tN\tR123.Strength\n"
            "dog\tcat\t37\t90\t0.4111\n"
            "dog\tbone\t8\t90\t0.0889\n"
            "Cat\tdog\t20\t60\t0.3333\n"
            "zebra\tstripes\t30\t60\t0.5\n"
            "house\thome\t12\t30\t0.4\n")


def test_swow_strength_layout_counts_the_r123_column(tmp_path):
    path = tmp_path / "strength.SWOW-EN.R123.csv"
    path.write_text(STRENGTH)
    layout = detect(path, NormsCfg("n", str(path)))
    assert layout.format == "strength" and layout.count == "R123" and layout.response == "response"
    got, st = _counts(path)
    assert got == {"dog": {"cat": 37.0, "bone": 8.0}, "cat": {"dog": 20.0}, "house": {"home": 12.0}, "tree": {}}
    assert st["rows_outside_vocabulary"] == 1 and st["covered"] == 3
    assert _counts(path, format="strength")[0] == got


def test_swow_strength_layout_of_first_responses(tmp_path):
    path = tmp_path / "strength.SWOW-EN.R1.csv"
    path.write_text(STRENGTH.replace("R123", "R1"))
    got, _ = _counts(path, responses=["R1"])
    assert got["dog"] == {"cat": 37.0, "bone": 8.0}
    with pytest.raises(PipelineError, match=r"the strength layout of responses R1, R2, R3 counts the column R123, "
                                            r"but the header has.*R1.*set norms\[0\]\.responses = \[\"R1\"\]"):
        _counts(path)
    r123 = tmp_path / "strength.SWOW-EN.R123.csv"
    r123.write_text(STRENGTH)
    with pytest.raises(PipelineError, match=r"the strength layout of responses R1 counts the column R1"):
        _counts(r123, responses=["R1"])


@pytest.mark.parametrize("text, kw, pattern", [
    ("cue,assoc\ndog,cat\n", {}, r"neither SWOW's \(cue, R1, R2, R3\), SWOW's strength table .* nor a counts table"),
    ("cue,R1,R2\ndog,cat,bone\n", {}, r"the swow layout needs the column\(s\) r3"),
    ("cue,response,count\ndog,cat,3\n", {"format": "swow"}, r"the swow layout needs the column\(s\) r1, r2, r3"),
    ("cue,response,count\ndog,cat,-1\n", {}, r"count\(s\) that are missing, negative or not a number"),
    ("cue,response,count\ndog,cat,NA\n", {}, r"count\(s\) that are missing, negative or not a number"),
    (STRENGTH, {"format": "counts"}, r"the counts layout needs the column\(s\) count.*format = \"strength\""),
    (STRENGTH.replace("\t37\t", "\t-1\t"), {}, r"column 'R123' holds 1 count\(s\) that are missing, negative"),
])
def test_bad_files_are_named_with_the_fix(tmp_path, text, kw, pattern):
    path = tmp_path / "norms.csv"
    path.write_text(text)
    with pytest.raises(PipelineError, match=pattern):
        _counts(path, **kw)


def test_config_validation(make_config):
    with pytest.raises(ConfigError, match=r"'rsa.references' names 'human:swow', but no \[\[norms\]\] entry"):
        make_config(rsa={"references": ["fc", "human:swow"]})
    with pytest.raises(ConfigError, match=r"'norms\[0\].responses' has unknown value 'R4'"):
        make_config(norms=[{"name": "swow", "path": "x.csv", "responses": ["R1", "R4"]}])
    with pytest.raises(ConfigError, match=r"'norms\[0\].name' = 'swow' appears twice"):
        make_config(norms=[{"name": "swow", "path": "x.csv"}, {"name": "swow", "path": "y.csv"}])
    with pytest.raises(ConfigError, match=r"'norms\[0\].format' has unknown value 'csv'"):
        make_config(norms=[{"name": "swow", "path": "x.csv", "format": "csv"}])
    with pytest.raises(ConfigError, match=r"unknown key 'norms\[0\].file'"):
        make_config(norms=[{"name": "swow", "path": "x.csv", "file": "y"}])
    cfg = make_config(norms=[{"name": "swow", "path": "x.csv"}], rsa={"references": ["fc", "human:swow"]})
    assert cfg.norms[0].responses == ["R1", "R2", "R3"] and cfg.norms[0].format == "auto"


def _vocab(cfg, words):
    paths.vocab_file(cfg).parent.mkdir(parents=True, exist_ok=True)
    paths.vocab_file(cfg).write_text("\n".join(words) + "\n")


def test_import_masks_words_without_norms_and_reruns_when_the_file_changes(make_config, tmp_path, caplog, capsys):
    path = tmp_path / "swow.csv"
    path.write_text(SWOW)
    cfg = make_config(norms=[{"name": "swow", "path": str(path)}])
    _vocab(cfg, WORDS)
    with caplog.at_level(logging.INFO, logger="pipeline.norms"):
        stats = import_norms(cfg, cfg.norms[0], WORDS)
    assert "Logging error" not in capsys.readouterr().err
    assert "5 responses in 5 columns" not in caplog.text and "5 distinct responses" in caplog.text
    d = paths.norms_dir(cfg, "swow")
    sim = np.load(d / "sim_ppmi.npy")
    assert np.isnan(sim[3]).all() and np.isnan(sim[:, 3]).all()
    assert np.isfinite(sim[:3, :3]).all()
    assert (d / "rows.txt").read_text().split() == WORDS
    summary = Manifest(cfg.run_dir).summary("norms/swow")
    assert summary["coverage"] == 0.75 and summary["missing_words"] == ["tree"] and summary["format"] == "swow"
    assert json.loads((d / "stats.json").read_text())["covered"] == stats["covered"] == 3
    written = json.loads((d / "stats.json").read_text())
    assert written["responses"] == stats["responses"] == 5 == summary["responses"]  # distinct responses counted
    assert written["response_columns"] == summary["response_columns"] == ["R1", "R2", "R3"]
    mtime = (d / "sim_ppmi.npy").stat().st_mtime_ns
    import_norms(cfg, cfg.norms[0], WORDS)
    assert (d / "sim_ppmi.npy").stat().st_mtime_ns == mtime
    path.write_text(SWOW + '"7",7,16,"tree","leaf","branch",NA\n')
    assert import_norms(cfg, cfg.norms[0], WORDS)["covered"] == 4


def test_aggregate_imports_norms_unless_narrowed(make_config, tmp_path):
    path = tmp_path / "swow.csv"
    path.write_text(SWOW)
    cfg = make_config(norms=[{"name": "swow", "path": str(tmp_path / "absent.csv")}], behave={"paradigms": []})
    _vocab(cfg, WORDS)
    aggregate.run(cfg, Options(model="m"))
    assert not paths.norms_dir(cfg, "swow").exists()
    with pytest.raises(PipelineError, match=r"norms\[0\].path = .*absent.csv.* file not found; point it at your "
                                            r"copy of the norms"):
        aggregate.run(cfg, Options())
    cfg.norms[0].path = str(path)
    aggregate.run(cfg, Options())
    assert (paths.norms_dir(cfg, "swow") / "sim_counts.npy").exists()


# ---------------------------------------------------------------- end to end

REFS = ["fc", "fa", "fc_scored", "static", "encoder", "consensus", "human:swow"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("norms-e2e")
    cfg = syn.config(syn.make_config_at(tmp), behave={"backend": "fake", "paradigms": ["fc", "fa", "fc_scored"]},
                     norms=[{"name": "swow", "path": str(tmp / "SWOW-EN.R100.csv")}],
                     rsa={"references": REFS, "bootstrap": 0}, regress={"seeds": [0], "cv": 2})
    built = syn.build(cfg, n_layers=3)
    covered = syn.write_swow(tmp / "SWOW-EN.R100.csv", built["words"], built["z"])
    syn.record_behave(cfg)
    aggregate.run(cfg, Options())
    for stage in (rsa, regress, report):
        stage.run(cfg, Options())
    return cfg, built, covered


def test_human_norms_and_scored_fc_are_references_in_rsa(run_dir):
    cfg, built, covered = run_dir
    df = pd.read_parquet(paths.result_table(cfg, "rsa"))
    human = df[df.reference == "human:swow"]
    assert len(human) == 2 * 2 * 3 * 3  # models x strategies x layers x methods
    assert set(human.n_words) == {len(covered)} and human.rsa.notna().all()
    assert len(df[df.reference == "fc_scored"]) == len(human)
    row = human[(human.model == "m1") & (human.strategy == "meaning") & (human.layer == 2)
                & (human.method == "spearman")].iloc[0]
    valid = np.isin(built["words"], covered)
    s = centered_cosine(built["hidden"]["m1", "meaning"][2].astype(np.float32))
    s[~valid] = np.nan
    s[:, ~valid] = np.nan
    ref = np.load(paths.norms_file(cfg, "swow"))
    assert row.rsa == pytest.approx(compare(s, ref, "spearman"), abs=1e-4)
    nn = pd.read_parquet(paths.result_table(cfg, "nn"))
    assert set(nn[nn.reference == "human:swow"].n_words) == {len(covered)}


def test_behavior_against_human_norms(run_dir):
    cfg, _, covered = run_dir
    bn = pd.read_parquet(paths.result_table(cfg, "behavior_norms"))
    assert set(zip(bn.model, bn.paradigm)) == {(m, p) for m in ("m1", "m2") for p in ("fc", "fa", "fc_scored")}
    assert set(bn.method) == {"spearman", "pearson", "paper"} and set(bn.reference) == {"human:swow"}
    row = bn[(bn.model == "m2") & (bn.paradigm == "fa") & (bn.method == "pearson")].iloc[0]
    fa = np.array(np.load(paths.matrix_file(cfg, "m2", "fa")))
    human = np.load(paths.norms_file(cfg, "swow"))
    both = ~np.isnan(fa).all(axis=1) & ~np.isnan(human).all(axis=1)
    assert row.n_words == both.sum() <= len(covered)
    assert row.rsa == pytest.approx(compare(fa[np.ix_(both, both)], human[np.ix_(both, both)], "pearson"), abs=1e-6)
    assert row.rsa > 0.2, "the synthetic norms share the behavior's latent geometry"


def test_regression_feature_sets_beyond_the_paper(run_dir):
    cfg, _, _ = run_dir
    reg = pd.read_parquet(paths.result_table(cfg, "regression"))
    assert list(dict.fromkeys(reg.feature_set)) == [
        "base", "base+cross", "base+cross+fc", "base+cross+fa", "base+cross+fc_scored", "base+cross+human:swow",
        "base+cross+fc+fa"]
    assert reg.r2_test.notna().all()
    assert regress.extra_features(cfg) == ["fc_scored", "human:swow"]


def test_report_shows_scored_fc_and_human_norms(run_dir):
    cfg, _, covered = run_dir
    md = (paths.report_dir(cfg) / "report.md").read_text()
    assert "## Scored forced choice vs generated FC" in md and "## Human association norms" in md
    cov = report.norms_coverage(cfg)
    assert cov.iloc[0]["words with norms"] == len(covered) and cov.iloc[0]["vocabulary"] == 30
    assert f"| human:swow | swow | {len(covered)} | 30 |" in md
    head = report.headline(cfg)
    assert head["best-layer RSA human:swow"].split()[0] == f"{_best(cfg, 'human:swow'):.3f}"
    assert head["best-layer RSA FC scored"].split()[0] == f"{_best(cfg, 'fc_scored'):.3f}"
    agree = paradigms.get("fc_scored").agreement(cfg)
    assert set(agree.model) == {"m1", "m2"} and (agree.n_trials == 30 * 8).all()
    assert head["FC scored top-2 = FC picks"].startswith(f"{agree.top2_same.iloc[0]:.1%} of 240 trials (m1)")
    wide = md.split("## RSA, mean over layers (Spearman", 1)[1].split("\n\n", 2)[1].splitlines()[0]
    assert wide.endswith("| fc | fa | fc_scored | static | encoder | consensus | human:swow |")
    assert "fc_scored_gain_peak" in md and "human:swow_gain_peak" in md


def _best(cfg, ref):
    df = pd.read_parquet(paths.result_table(cfg, "rsa"))
    return df[(df.reference == ref) & (df.method == "spearman")].rsa.max()


def test_norms_covering_no_word_are_refused_at_import(make_config, tmp_path):
    path = tmp_path / "swow.csv"
    path.write_text('"","cue","R1","R2","R3"\n"1","zebra","stripes",NA,NA\n"2","quasar","star","space",NA\n')
    cfg = make_config(norms=[{"name": "swow", "path": str(path)}])
    _vocab(cfg, WORDS)
    with pytest.raises(PipelineError, match=r"swow.csv: none of the 4 vocabulary words .* is a cue .* \(2 cues, e\.g\. "
                                            r"quasar, zebra"):
        import_norms(cfg, cfg.norms[0], WORDS)
    assert not paths.norms_dir(cfg, "swow").exists()
    assert Manifest(cfg.run_dir).stage("norms/swow") is None


@pytest.mark.parametrize("n_covered", [1, 3])
def test_regression_skips_a_norms_set_it_cannot_fit(tmp_path, caplog, n_covered):
    cfg = syn.config(syn.make_config_at(tmp_path), behave={"backend": "fake", "paradigms": ["fc", "fa"]},
                     norms=[{"name": "swow", "path": str(tmp_path / "swow.csv")}], n_words=20,
                     rsa={"references": ["fc", "fa", "static", "encoder", "human:swow"], "bootstrap": 0},
                     regress={"seeds": [0], "cv": 5})
    built = syn.build(cfg, n_layers=2)
    words = built["words"]
    syn.write_swow(tmp_path / "swow.csv", words, built["z"], missing=range(n_covered, len(words)))
    syn.record_behave(cfg)
    aggregate.run(cfg, Options())
    rsa.run(cfg, Options())
    regress.run(cfg, Options())
    reg = pd.read_parquet(paths.result_table(cfg, "regression"))
    assert "base+cross+human:swow" not in set(reg.feature_set) and "base+cross+fc+fa" in set(reg.feature_set)
    assert reg.r2_test.notna().all()
    assert any("human:swow" in r.message and "cannot be fitted" in r.message for r in caplog.records)
    note = Manifest(cfg.run_dir).summary("regress/m1/meaning")["skipped_sets"]
    assert "base+cross+human:swow" in note

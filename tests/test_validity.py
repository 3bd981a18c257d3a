"""Measurement validity: position-prior debiasing, position bias, norm and rogue-dimension
diagnostics, Spearman-Brown planning; numerics against hand values on small inputs."""

from __future__ import annotations

import _synthetic as syn
import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from pipeline import aggregate, logs, paths, scored, validity
from pipeline.logs import SCORED_SCHEMA
from pipeline.trials import fc_group_sizes

# ---------------------------------------------------------------- PriDe debiasing

def test_debias_recovers_content_under_a_known_prior():
    rng = np.random.default_rng(0)
    s, n = 8, 4000
    prior = np.array([0.4, 0.25, 0.1, 0.08, 0.06, 0.05, 0.04, 0.02])
    content = rng.dirichlet(np.ones(s), size=n)  # the semantic preference, candidates at random positions
    observed = content * prior
    observed /= observed.sum(axis=1, keepdims=True)
    lengths = np.full(n, s)
    logp = np.log(observed).ravel() - 3.0  # unnormalized log-probabilities: an offset changes nothing
    exact = scored.debias(lengths, logp, {s: prior})
    assert np.allclose(exact.reshape(n, s), content, atol=1e-12)
    est = scored.PositionPrior("log")
    est.add(lengths[: n // 2], logp[: n // 2 * s])
    est.add(lengths[n // 2:], logp[n // 2 * s:])
    got = est.result()[s]
    assert got.sum() == pytest.approx(1.0)
    assert np.allclose(got, prior, rtol=0.08)
    debiased = scored.debias(lengths, logp, est.result()).reshape(n, s)
    assert observed.mean(axis=0)[0] > 0.3
    assert np.abs(debiased.mean(axis=0) - 1 / s).max() < 0.01
    assert np.abs(debiased - content).mean() < 0.01
    mean = scored.PositionPrior("mean")
    mean.add(lengths, logp)
    flat = scored.debias(lengths, logp, mean.result()).reshape(n, s)
    assert np.abs(flat.mean(axis=0) - 1 / s).max() < 0.03 < np.abs(observed.mean(axis=0) - 1 / s).max()
    assert np.abs(flat - content).mean() < np.abs(observed - content).mean() / 2


def test_position_prior_per_length_by_hand():
    probs = np.array([0.8, 0.2, 0.5, 0.25, 0.25, 0.6, 0.4])
    est = scored.PositionPrior("log")
    est.add(np.array([2, 3, 2]), np.log(probs))
    prior = est.result()
    two = np.exp([(np.log(0.8) + np.log(0.6)) / 2, (np.log(0.2) + np.log(0.4)) / 2])
    assert prior[2] == pytest.approx(two / two.sum())
    assert prior[3] == pytest.approx([0.5, 0.25, 0.25])
    est = scored.PositionPrior("mean")
    est.add(np.array([2, 3, 2]), np.log(probs) + 1.0)
    assert est.result()[2] == pytest.approx([0.7, 0.3])
    with pytest.raises(ValueError, match="unknown position-prior"):
        scored.PositionPrior("median")
    out = scored.debias(np.array([2]), np.log([0.8, 0.2]), {2: np.array([0.8, 0.2])})
    assert out == pytest.approx([0.5, 0.5])


# ---------------------------------------------------------------- hand values

def test_choice_kl_by_hand():
    assert validity.choice_kl([0.25, 0.25, 0.25, 0.25]) == pytest.approx(0.0)
    q = np.array([0.5, 0.3, 0.1, 0.1])
    assert validity.choice_kl(q) == pytest.approx(0.25 * sum(np.log(0.25 / x) for x in q))
    # counts get half a pick per position: (6.5, 2.5, 0.5, 0.5) / 10
    assert validity.choice_kl([6, 2, 0, 0], smooth_n=8) == pytest.approx(
        0.25 * (np.log(0.25 / 0.65) + np.log(0.25 / 0.25) + 2 * np.log(0.25 / 0.05)))


def test_spearman_brown_factor_by_hand():
    assert validity.spearman_brown_factor(0.5, 0.8) == pytest.approx(4.0)  # 0.8 * 0.5 / (0.5 * 0.2)
    rel, f = 0.2, validity.spearman_brown_factor(0.2, 0.8)
    assert f * rel / (1 + (f - 1) * rel) == pytest.approx(0.8)
    assert validity.spearman_brown_factor(0.9, 0.8) < 1
    assert validity.spearman_brown_factor(-0.1, 0.8) == np.inf
    assert validity.spearman_brown_factor(float("nan"), 0.8) == np.inf


def test_norm_diagnostics_by_hand():
    x = np.array([[3.0, 4.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 2.0], [60.0, 0.0, 80.0]])
    d = validity.norm_diagnostics(x, ratio=5.0)
    assert d["median_norm"] == pytest.approx(3.5)  # norms 5, 1, 2, 100
    assert d["max_norm"] == pytest.approx(100.0) and d["norm_ratio"] == pytest.approx(100 / 3.5)
    assert d["outliers"] == [3]
    unit = x / np.linalg.norm(x, axis=1)[:, None]
    cos = unit @ unit.T
    pairs = cos[np.triu_indices(4, 1)]
    assert d["mean_cosine"] == pytest.approx(pairs.mean())
    cc = [np.mean([unit[a, i] * unit[b, i] for a, b in zip(*np.triu_indices(4, 1))]) for i in range(3)]
    assert d["rogue_dim"] == int(np.argmax(cc)) and d["rogue_share"] == pytest.approx(max(cc) / sum(cc))
    c = x - x.mean(axis=0)
    cu = c / np.linalg.norm(c, axis=1)[:, None]
    share = (cu ** 2).mean(axis=0)
    assert d["centred_dim"] == int(np.argmax(share)) and d["centred_share"] == pytest.approx(share.max())


# ---------------------------------------------------------------- a position-biased run (the defect)

def _biased_run(make_config, orders=2, n=30, k=8, seed=0, prior=(4.0, 3.0), content=1.5):
    """FC and scored-FC logs of a chooser that mostly takes list positions 1-2 (generated FC) or
    multiplies a strong position prior into its content preference (scored FC), as SmolLM2 does
    on the demo; content = a latent geometry shared with the hidden states."""
    cfg = syn.config(make_config, models=("m",), n_words=n, trials={"fc_candidates": k, "fc_orders": orders},
                     behave={"paradigms": ["fc", "fa", "fc_scored"]})
    out = syn.build(cfg, n_layers=2)
    words, z = out["words"], out["z"]
    rng = np.random.default_rng(seed)
    aff = z @ z.T
    m = len(fc_group_sizes(n, k))
    log_prior = np.array([*prior] + [0.0] * (k - 2))
    fc, sc = [], []
    for c in range(n):
        perm = rng.permutation([j for j in range(n) if j != c])
        for g, cand in enumerate(np.array_split(perm, m)):
            s = len(cand)
            for j in range(orders):
                sh = (j * s) // orders
                rot = np.concatenate([cand[sh:], cand[:sh]])
                tid = j * n * m + c * m + g
                if rng.random() < 0.8:
                    picks = [words[rot[0]], words[rot[1]]]
                else:
                    picks = [words[i] for i in rot[np.argsort(-aff[c, rot])[:2]]]
                fc.append(syn._log_row(tid, c, words[c], picks, candidates=[words[i] for i in rot]))
                lp = log_prior[:s] + content * aff[c, rot] + 0.3 * rng.standard_normal(s) - 5
                sc.append(syn._scored_row(tid, c, words[c], [words[i] for i in rot], lp))
    for p, rows, schema in (("fc", fc, None), ("fc_scored", sc, SCORED_SCHEMA)):
        d = paths.behavior_dir(cfg, "m", p)
        for part in logs.list_parts(d):
            part.unlink()
        logs.write_part(d, pa.Table.from_pylist(rows, schema=schema))
    return cfg, words


def test_position_bias_is_measured_and_named(make_config):
    cfg, words = _biased_run(make_config)
    rows, fc = validity.position_tables(cfg, "m", "fc")
    assert 0.7 < fc["top2_share"] < 0.9 and fc["top_position"] in (1, 2) and fc["large"]
    prof = pd.DataFrame(rows)
    assert set(prof.n_candidates) == {7, 8}
    assert prof.groupby("n_candidates").share.sum().to_numpy() == pytest.approx([1.0, 1.0])
    _, sc = validity.position_tables(cfg, "m", "fc_scored")
    assert sc["top_position"] == 1 and sc["top2_share"] > 0.6 and sc["large"]
    assert sc["ckld_debiased"] < sc["ckld"] / 4
    text = " ".join(validity.sentences(cfg, {"validity_bias": pd.DataFrame([fc, sc])}))
    assert "FC (m) is position-biased" in text and "Scored FC (m) is position-biased" in text


def test_debiasing_raises_scored_reliability(make_config):
    cfg, words = _biased_run(make_config, orders=1, prior=(6.0, 5.0), content=0.7)
    rel = {}
    for mode in ("expected", "debiased"):
        cfg.behave.scored_counts = mode
        rel[mode] = aggregate.split_half(cfg, "m", "fc_scored", words)[0]["reliability"]
    assert rel["debiased"] > max(rel["expected"] + 0.1, 1.8 * rel["expected"]), rel


def test_norm_outlier_word_is_named(make_config):
    cfg = syn.config(make_config, models=("m",), hidden={"strategies": ["meaning"]})
    out = syn.build(cfg, n_layers=3)
    stack = out["hidden"]["m", "meaning"].copy()
    stack[2:, 4] *= 40  # one word's vector from layer 2 on, as the attention sink in `averaged`
    np.save(paths.hidden_file(cfg, "m", "meaning"), stack)
    rows = pd.DataFrame(validity.hidden_rows(cfg, "m", "meaning", out["words"]))
    assert rows.n_outliers.tolist() == [0, 1, 1] and rows.outlier_words.tolist()[1:] == ["water", "water"]
    assert rows.norm_ratio.iloc[2] > 20 and rows.flagged.tolist()[1:] == [True, True]
    text = " ".join(validity.sentences(cfg, {"validity_hidden": rows}))
    assert "Hidden m/meaning: 2/3 layers have word vectors over 5x the median norm" in text


# ---------------------------------------------------------------- stage, planner, CLI

def test_stage_writes_tables_and_planner(make_config, capsys):
    from pipeline import cli, rsa
    from pipeline.options import Options

    cfg, words = _biased_run(make_config, orders=2)
    cfg.rsa.bootstrap = 0
    rsa.run(cfg, Options())
    validity.run(cfg, Options())
    t = validity.load(cfg)
    assert set(t) == set(validity.TABLES)
    assert set(t["validity_bias"].paradigm) == {"fc", "fc_scored"}
    assert len(t["validity_hidden"]) == 2 * 2  # meaning, task_fc x layers 1..2
    ceil = t["validity_ceiling"]
    assert set(ceil.paradigm) == {"fc", "fa", "fc_scored"} and ceil.rsa_encoder.notna().all()
    rel = pd.read_parquet(paths.result_table(cfg, "reliability"))
    sp = rel[(rel.paradigm == "fa") & (rel.method == "spearman")].reliability.iloc[0]
    plan = t["validity_plan"].set_index("paradigm")
    f = 0.8 * (1 - sp) / (sp * 0.2)
    assert plan.loc["fa", "factor"] == pytest.approx(f)
    assert plan.loc["fa", "units_needed"] == max(1, int(np.ceil(6 * f)))  # fa_runs = 6
    assert plan.loc["fa", "trials_plan"] == 5000 * plan.loc["fa", "units_needed"]
    assert plan.loc["fa", "gpu_h_plan_high"] == pytest.approx(plan.loc["fa", "trials_plan"] / 700 / 3600)
    assert plan.loc["fc", "per_cue_now"] == 4 * 2  # m = 4 groups x 2 orders
    mtime = paths.result_table(cfg, "validity_bias").stat().st_mtime_ns
    validity.run(cfg, Options())
    assert paths.result_table(cfg, "validity_bias").stat().st_mtime_ns == mtime
    assert cli.COMMANDS["plan-trials"] == "pipeline.validity:plan_trials"
    validity.plan_trials(cfg, Options())
    out = capsys.readouterr().out
    assert "FA (m): r_SB = " in out and ("GPU-hours" in out or "already reaches" in out)


def test_plan_trials_without_reliability_is_one_message(make_config):
    from pipeline.errors import PipelineError
    from pipeline.options import Options

    cfg = make_config()
    with pytest.raises(PipelineError, match="no split-half reliability yet; run `python -m pipeline rsa"):
        validity.plan_trials(cfg, Options())


def test_validity_config_is_checked(make_config):
    from pipeline.config import ConfigError

    with pytest.raises(ConfigError, match="validity.target_reliability"):
        make_config(validity={"target_reliability": 1.0})
    with pytest.raises(ConfigError, match="validity.fc_trials_per_s"):
        make_config(validity={"fc_trials_per_s": [500.0, 300.0]})


def test_report_has_validity_section_figure_and_headline(make_config):
    from pipeline import report, rsa
    from pipeline.options import Options

    cfg, _ = _biased_run(make_config, orders=1)
    cfg.rsa.bootstrap = 0
    rsa.run(cfg, Options())
    validity.run(cfg, Options())
    report.run(cfg, Options())
    text = paths.report_file(cfg).read_text()
    assert "## Validity" in text and "![validity.png](validity.png)" in text
    assert "FC (m) is position-biased" in text and "**Reliability planner**" in text
    assert (paths.report_dir(cfg) / "validity.png").stat().st_size > 10_000
    head = report.headline(cfg)["validity"]
    assert head.startswith("FC positions 1-2 ") and "r_SB FC " in head and "largest norm/median" in head


def test_paper_mode_only_reports(make_config):
    from pipeline import rsa
    from pipeline.options import Options

    cfg = syn.config(make_config, models=("m",), experiment={"name": "paper", "paper_mode": True},
                     behave={"paradigms": ["fc", "fa", "fc_scored"]}, rsa={"bootstrap": 0})
    syn.build(cfg, n_layers=2)
    assert cfg.behave.scored_counts == "expected"
    rsa.run(cfg, Options())
    before = {p: p.read_bytes() for p in sorted(cfg.run_dir.rglob("*")) if p.is_file() and "manifest" not in p.name}
    validity.run(cfg, Options())
    after = {p: p.read_bytes() for p in before}
    assert after == before
    assert set(validity.load(cfg)) == set(validity.TABLES)

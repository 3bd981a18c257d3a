"""The authors' released trials (`released`): small files the tests write in the released
schema (FC `trial_id, input, candidates, output, extracted_1, extracted_2, pick_1, pick_2`; FA
`run, input, association, position`) become the trial logs of behavior-only models
``paper:<model>``; files that do not fit are refused with one line naming the file; and an
end-to-end run uses a released model as an RSA reference, in behavior_rsa, split-half
reliability and validity's position table (shares from the released candidate order)."""

from __future__ import annotations

import json
import logging
import os

import _synthetic as syn
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline import aggregate, comparison, logs, paths, released, rsa, trials, validity
from pipeline.config import ConfigError, ReleasedModelCfg, from_dict
from pipeline.errors import PipelineError
from pipeline.manifest import Manifest
from pipeline.options import Options
from pipeline.similarity import centered_cosine

MODEL = "Tiny-1"
NAME = f"paper:{MODEL}"


def _config(make_config, root, refs=("fc", "fa", f"fc:{NAME}", f"fa:{NAME}"), **released_keys):
    entry = {"path": str(root), "models": [MODEL], **released_keys}
    return syn.config(make_config, models=("m1", "m2"), n_words=20, released=[entry],
                      hidden={"strategies": ["meaning"]},
                      rsa={"references": list(refs), "bootstrap": 0, "methods": ["spearman", "pearson"]})


def _fc_frame(cfg, affinity=None, reverse=True) -> pd.DataFrame:
    """The released FC rows of the run's plan: candidates in reversed plan order (so the
    released order differs from the plan's), picks by affinity (else the first two listed);
    every third trial's second pick is invalid (NA), every fifth answer repeats the cue."""
    plan = trials.load_trials(cfg, "fc").to_pylist()
    words = [r["cue"] for r in plan[::len(trials.fc_group_sizes(cfg.vocab.size, cfg.trials.fc_candidates))]]
    rows = []
    for r in plan:
        cands = r["candidates"][::-1] if reverse else list(r["candidates"])
        if affinity is not None:
            ranked = sorted(cands, key=lambda w: -affinity[r["cue_idx"], words.index(w)])
        else:
            ranked = cands
        a, b = ranked[0], ranked[1]
        t = r["trial_id"]
        e2, p2 = (b, b) if t % 3 else ("zzz", None)
        if t % 5 == 0:
            e2, p2 = r["cue"], None
        rows.append({"trial_id": t, "input": r["cue"], "candidates": cands, "output": f"output: {a}, {e2}",
                     "extracted_1": a, "extracted_2": e2, "pick_1": a, "pick_2": p2})
    return pd.DataFrame(rows)


def _fa_frame(cfg, affinity=None) -> pd.DataFrame:
    """Released FA rows: 5 associates per trial (run 1: the cue repeated; run 2: one NA);
    cue 2 has no associates at all in run 0; rows shuffled."""
    words = syn.WORDS[:cfg.vocab.size]
    rng = np.random.default_rng(0)
    rows = []
    for c, cue in enumerate(words):
        for run in range(cfg.trials.fa_runs):
            if c == 2 and run == 0:
                continue
            if affinity is not None:
                p = np.exp(2 * affinity[c])
                p[c] = 0
                assoc = [words[j] for j in rng.choice(len(words), size=4, replace=False, p=p / p.sum())]
            else:
                assoc = [words[(c + j + 1) % len(words)] for j in range(4)]
            assoc.append(cue if run == 1 else f"zz{run}")
            for pos, a in enumerate(assoc, start=1):
                rows.append({"run": run, "input": cue, "association": None if run == 2 and pos == 3 else a,
                             "position": pos})
    df = pd.DataFrame(rows)
    return df.sample(frac=1.0, random_state=0).reset_index(drop=True)


def _write(root, paradigm: str, df: pd.DataFrame | pa.Table) -> str:
    folder = root / released.FOLDERS[paradigm]
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{MODEL}.parquet"
    table = df if isinstance(df, pa.Table) else pa.Table.from_pandas(df, preserve_index=False)
    pq.write_table(table, path, row_group_size=100)
    return str(path)


def _prepared(make_config, tmp_path, **keys):
    cfg = _config(make_config, tmp_path / "release", **keys)
    syn.prepare(cfg)
    return cfg


def _final(cfg, paradigm: str) -> pd.DataFrame:
    out = pa.Table.from_batches(list(logs.iter_final(paths.behavior_dir(cfg, NAME, paradigm))))
    return out.to_pandas().sort_values("trial_id").reset_index(drop=True)


# ---------------------------------------------------------------- config

def test_config_adds_released_models_as_behavior_only(make_config, tmp_path):
    cfg = _config(make_config, tmp_path)
    m = cfg.model(NAME)
    assert isinstance(m, ReleasedModelCfg) and m.behavior_only and m.source == MODEL
    assert cfg.paradigms_of(NAME) == ["fc", "fa"]
    assert cfg.to_dict()["released"][0]["models"] == [MODEL]
    assert NAME not in [d["name"] for d in cfg.to_dict()["models"]]
    assert from_dict(cfg.to_dict()).to_dict() == cfg.to_dict()
    fc_only = _config(make_config, tmp_path, refs=["fc", f"fc:authors:{MODEL}"], paradigms=["fc"], prefix="authors")
    assert fc_only.paradigms_of(f"authors:{MODEL}") == ["fc"]


def test_released_models_run_only_the_papers_paradigms_beside_registered_ones(make_config, tmp_path, caplog):
    from pipeline.options import model_paradigms

    cfg = syn.config(make_config, models=("m1",), n_words=20, released=[{"path": str(tmp_path), "models": [MODEL]}],
                     behave={"paradigms": ["fc", "fa", "triplet"]}, hidden={"strategies": ["meaning"]},
                     rsa={"references": ["fc", "fa"], "bootstrap": 0, "methods": ["spearman"]})
    assert cfg.paradigms_of("m1") == ["fc", "fa", "triplet"]
    assert cfg.paradigms_of(NAME) == ["fc", "fa"]
    with caplog.at_level(logging.INFO, logger="pipeline.options"):
        assert model_paradigms(cfg, NAME, ["fc", "fa", "triplet"], "aggregate") == ["fc", "fa"]
    assert "triplet skipped: not among released[0].paradigms" in caplog.text
    with pytest.raises(ConfigError, match=r"released\[0\]\.paradigms"):
        _config(make_config, tmp_path, paradigms=["triplet"])


@pytest.mark.parametrize("keys, needle", [
    ({"colour": 1}, "unknown key 'released[0].colour'"),
    ({"paradigms": ["fc_scored"]}, "released[0].paradigms"),
    ({"models": []}, "released[0].models"),
    ({"models": ["a/b"]}, "released[0].models[0]"),
    ({"prefix": "a:b"}, "released[0].prefix"),
    ({"max_mismatch": 1.0}, "released[0].max_mismatch"),
    ({"prefix": "", "models": ["m1"]}, "already has"),
])
def test_config_refuses_bad_entries(make_config, tmp_path, keys, needle):
    with pytest.raises(ConfigError, match=needle.replace("[", r"\[").replace("]", r"\]")):
        _config(make_config, tmp_path, **keys)


def test_config_refuses_released_backend_on_a_models_table(make_config):
    with pytest.raises(ConfigError, match="'models\\[0\\].backend' has unknown value 'released'"):
        make_config(models=[{"name": "x", "backend": "released"}])


# ---------------------------------------------------------------- import

def test_fc_import_keeps_authors_picks_and_released_order(make_config, tmp_path):
    cfg = _prepared(make_config, tmp_path)
    df = _fc_frame(cfg)
    _write(tmp_path / "release", "fc", df)
    _write(tmp_path / "release", "fa", _fa_frame(cfg))
    released.run(cfg, Options(paradigm="fc"))
    got = _final(cfg, "fc")
    assert len(got) == len(df) == trials.load_trials(cfg, "fc").num_rows
    assert [list(c) for c in got.candidates] == [list(c) for c in df.candidates]
    picks = [[a] + ([b] if pd.notna(b) else []) for a, b in zip(df.pick_1, df.pick_2)]
    assert [list(p) for p in got.picks] == picks
    expected_status = ["cue_repeat" if t % 5 == 0 else "not_in_list" if t % 3 == 0 else "ok" for t in df.trial_id]
    assert got.status.tolist() == expected_status
    assert (got.attempt_kind == "released").all() and got.raw_output.tolist() == df.output.tolist()
    rec = Manifest(cfg.run_dir).stage(f"behave/{NAME}/fc")
    assert rec["complete"]
    s = rec["summary"]
    assert s["n_trials"] == len(df) and s["compliance"] == pytest.approx(expected_status.count("ok") / len(df), abs=1e-4)
    assert s["released"]["order_differs"] == len(df)  # reversed groups: same sets, other order
    assert s["released"]["missing_trials"] == 0 and s["first_try_ok"] is None


def test_fa_import_orders_by_position_and_logs_every_trial(make_config, tmp_path):
    cfg = _prepared(make_config, tmp_path)
    df = _fa_frame(cfg)
    _write(tmp_path / "release", "fa", df)
    released.run(cfg, Options(paradigm="fa"))
    got = _final(cfg, "fa")
    n = cfg.vocab.size * cfg.trials.fa_runs
    assert len(got) == n and got.trial_id.tolist() == list(range(n))
    words = syn.WORDS[:cfg.vocab.size]
    row = got.iloc[5 * cfg.trials.fa_runs + 2]
    assert row.cue == words[5] and row.run == 2
    expected = [a for _, a in sorted((r.position, r.association) for r in df.itertuples()
                                     if r.input == words[5] and r.run == 2 and pd.notna(r.association))]
    assert list(row.picks) == expected and len(expected) == 4 and row.status == "wrong_count"
    assert row.raw_output == "output: " + ", ".join(expected) + "."
    empty = got.iloc[2 * cfg.trials.fa_runs]
    assert list(empty.picks) == [] and empty.status == "unparseable"
    assert got.iloc[1].status == "cue_repeat" and got.iloc[0].status == "ok"
    summary = Manifest(cfg.run_dir).summary(f"behave/{NAME}/fa")
    assert summary["released"]["null_associations"] == cfg.vocab.size
    assert summary["released"]["trials_without_associates"] == 1


def test_fa_keeps_the_first_k_associates_by_position(make_config, tmp_path):
    cfg = _prepared(make_config, tmp_path)
    df = _fa_frame(cfg)
    extra = pd.DataFrame([{"run": 0, "input": syn.WORDS[7], "association": "early", "position": 0},
                          {"run": 0, "input": syn.WORDS[7], "association": "late", "position": 6}])
    _write(tmp_path / "release", "fa", pd.concat([extra, df], ignore_index=True))
    released.run(cfg, Options(paradigm="fa"))
    row = _final(cfg, "fa").iloc[7 * cfg.trials.fa_runs]
    listed = [a for _, a in sorted((r.position, r.association) for r in df.itertuples()
                                   if r.input == syn.WORDS[7] and r.run == 0)]
    assert list(row.picks) == ["early", *listed[:4]]
    assert Manifest(cfg.run_dir).summary(f"behave/{NAME}/fa")["released"]["beyond_k"] == 2


def test_string_forms_of_candidates_give_the_same_logs(make_config, tmp_path):
    cfg = _prepared(make_config, tmp_path)
    df = _fc_frame(cfg)
    _write(tmp_path / "release", "fc", df)
    released.run(cfg, Options(paradigm="fc"))
    as_list = _final(cfg, "fc")
    for form in (lambda c: ", ".join(c), lambda c: str(list(c)), lambda c: json.dumps(list(c)),
                 lambda c: "[" + ", ".join(c) + "]"):
        text = df.assign(candidates=[form(c) for c in df.candidates])
        _write(tmp_path / "release", "fc", text)
        released.run(cfg, Options(paradigm="fc"))
        again = _final(cfg, "fc")
        assert [list(c) for c in again.candidates] == [list(c) for c in as_list.candidates]
        assert [list(p) for p in again.picks] == [list(p) for p in as_list.picks]


def test_import_is_skipped_until_the_file_changes(make_config, tmp_path, caplog):
    cfg = _prepared(make_config, tmp_path)
    df = _fc_frame(cfg)
    path = _write(tmp_path / "release", "fc", df)
    released.run(cfg, Options(paradigm="fc"))
    parts = logs.list_parts(paths.behavior_dir(cfg, NAME, "fc"))
    mtimes = [p.stat().st_mtime_ns for p in parts]
    with caplog.at_level(logging.INFO, logger="pipeline.released"):
        released.run(cfg, Options(paradigm="fc"))
    assert any("skipping" in r.getMessage() for r in caplog.records)
    assert [p.stat().st_mtime_ns for p in parts] == mtimes
    released.run(cfg, Options(paradigm="fc", force=True))
    again = logs.list_parts(paths.behavior_dir(cfg, NAME, "fc"))
    assert [p.stat().st_mtime_ns for p in again] != mtimes
    assert not [p for p in paths.behavior_dir(cfg, NAME, "fc").parent.iterdir() if ".stale-" in p.name]
    df.loc[0, "pick_1"] = df.loc[0, "candidates"][1]
    _write(tmp_path / "release", "fc", df)
    os.utime(path, ns=(1, 1))
    released.run(cfg, Options(paradigm="fc"))
    assert list(_final(cfg, "fc").picks[0])[0] == df.loc[0, "candidates"][1]
    stale = [p for p in paths.behavior_dir(cfg, NAME, "fc").parent.iterdir() if p.name.startswith("fc.stale-")]
    assert len(stale) == 1 and logs.list_parts(stale[0])


def _broken(cfg, kind: str) -> tuple[str, pa.Table | pd.DataFrame, str]:
    df = _fc_frame(cfg)
    if kind == "missing column":
        return "fc", df.drop(columns=["pick_2"]), "'pick_2' missing"
    if kind == "candidates of another type":
        return "fc", df.assign(candidates=list(range(len(df)))), "neither a list of words nor its string form"
    if kind == "candidates text of one word":
        return "fc", df.assign(candidates=[" ".join(c) for c in df.candidates]), \
            "neither a list of words nor its string form"
    if kind == "candidates text half bracketed":
        return "fc", df.assign(candidates=["[" + ", ".join(c) for c in df.candidates]), \
            "neither a list of words nor its string form"
    if kind == "trial ids outside the plan":
        df.loc[7, "trial_id"] = 10_000
        return "fc", df, "trial ids outside the FC plan"
    if kind == "off-plan groups":
        k = int(0.05 * len(df)) + 1
        df.loc[:k, "candidates"] = df.loc[:k, "candidates"].map(lambda c: ["dog", *c[1:]] if c[0] != "dog" else
                                                                ["cat", *c[1:]])
        return "fc", df, "do not match the FC plan"
    if kind == "trial ids as text":
        return "fc", df.assign(trial_id=df.trial_id.astype(str)), "'trial_id' holds large_string, not integers"
    if kind == "FA run beyond the plan":
        fa = _fa_frame(cfg)
        fa.loc[3, "run"] = cfg.trials.fa_runs
        return "fa", fa, "outside the FA plan"
    if kind == "FA position not an integer":
        fa = _fa_frame(cfg)
        return "fa", fa.assign(position=fa.position + 0.5), "'position' holds double, not integers"
    if kind == "FA cue outside the plan":
        fa = _fa_frame(cfg)
        fa.loc[3, "input"] = "zebra"
        return "fa", fa, "outside the FA plan"
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["missing column", "candidates of another type", "candidates text of one word",
                                  "candidates text half bracketed",
                                  "trial ids outside the plan", "off-plan groups", "trial ids as text",
                                  "FA cue outside the plan", "FA run beyond the plan", "FA position not an integer"])
def test_a_file_that_does_not_fit_is_one_line_and_loses_nothing(make_config, tmp_path, kind):
    cfg = _prepared(make_config, tmp_path)
    _write(tmp_path / "release", "fc", _fc_frame(cfg))
    _write(tmp_path / "release", "fa", _fa_frame(cfg))
    released.run(cfg, Options())
    before = {p: sorted(q.name for q in logs.list_parts(paths.behavior_dir(cfg, NAME, p))) for p in ("fc", "fa")}
    paradigm, bad, needle = _broken(cfg, kind)
    path = _write(tmp_path / "release", paradigm, bad)
    with pytest.raises(PipelineError) as err:
        released.run(cfg, Options(paradigm=paradigm))
    msg = str(err.value)
    assert path in msg and needle in msg and "\n" not in msg
    after = {p: sorted(q.name for q in logs.list_parts(paths.behavior_dir(cfg, NAME, p))) for p in ("fc", "fa")}
    assert after == before
    assert all(Manifest(cfg.run_dir).stage(f"behave/{NAME}/{p}")["complete"] for p in ("fc", "fa"))
    assert not list(paths.behavior_dir(cfg, NAME, paradigm).parent.glob(f".{paradigm}.importing"))


def test_truncated_or_missing_file_is_one_line(make_config, tmp_path):
    cfg = _prepared(make_config, tmp_path)
    path = _write(tmp_path / "release", "fc", _fc_frame(cfg))
    data = open(path, "rb").read()
    open(path, "wb").write(data[: len(data) // 2])
    with pytest.raises(PipelineError, match="unreadable as Parquet") as err:
        released.run(cfg, Options(paradigm="fc"))
    assert path in str(err.value)
    with pytest.raises(PipelineError, match="no such file") as err:
        released.run(cfg, Options(paradigm="fa"))
    assert f"{MODEL}.parquet" in str(err.value) and "released[0].path" in str(err.value)


def test_a_few_off_plan_rows_are_skipped_and_counted(make_config, tmp_path):
    cfg = _prepared(make_config, tmp_path, max_mismatch=0.05)
    df = _fc_frame(cfg)
    df.loc[4, "input"] = "cat" if df.loc[4, "input"] != "cat" else "dog"
    df.at[9, "candidates"] = list(df.loc[9, "candidates"][:-1])
    df = pd.concat([df, df.iloc[[11]]], ignore_index=True)
    _write(tmp_path / "release", "fc", df)
    released.run(cfg, Options(paradigm="fc"))
    got = _final(cfg, "fc")
    assert 4 not in set(got.trial_id) and 9 not in set(got.trial_id) and len(got) == len(df) - 3
    s = Manifest(cfg.run_dir).summary(f"behave/{NAME}/fc")["released"]
    assert (s["cue_mismatch"], s["group_mismatch"], s["duplicate_ids"], s["missing_trials"]) == (1, 1, 1, 2)


def test_behave_runs_nothing_for_a_released_model(make_config, tmp_path, caplog):
    from pipeline import behave

    cfg = _prepared(make_config, tmp_path)
    with caplog.at_level(logging.INFO):
        behave.run(cfg, Options(model=NAME))
    assert not paths.behavior_dir(cfg, NAME, "fc").exists()
    assert any("released trials" in r.getMessage() for r in caplog.records)
    with pytest.raises(PipelineError, match="python -m pipeline released"):
        aggregate.aggregate_one(cfg, NAME, "fc", syn.WORDS[:cfg.vocab.size])


def test_position_shares_by_hand(make_config, tmp_path):
    """20 cues x 5 groups (4, 4, 4, 4, 3 candidates); every answer picks the first two listed;
    the second pick is NA where trial_id % 3 == 0 or % 5 == 0. The 20 trials with 3 candidates
    (trial_id = 5c + 4) lose their second pick for c = 1, 4, ..., 19 (7 trials): 20 picks at
    position 1, 13 at position 2, none at 3."""
    cfg = _prepared(make_config, tmp_path)
    _write(tmp_path / "release", "fc", _fc_frame(cfg))
    released.run(cfg, Options(paradigm="fc"))
    validity.run(cfg, Options())
    pos = pd.read_parquet(paths.result_table(cfg, "validity_position")).query(
        f"model == '{NAME}' and n_candidates == 3").sort_values("position")
    assert pos.n.tolist() == [20, 13, 0]
    np.testing.assert_allclose(pos.share, [20 / 33, 13 / 33, 0], atol=1e-12)
    np.testing.assert_allclose(pos.first_share, [1, 0, 0], atol=1e-12)


# ---------------------------------------------------------------- end to end

@pytest.fixture(scope="module")
def e2e(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("released-e2e")
    cfg = _config(syn.make_config_at(tmp), tmp / "release")
    syn.prepare(cfg)
    plain = _config(syn.make_config_at(tmp), tmp / "release")
    plain.models = [m for m in plain.models if not isinstance(m, ReleasedModelCfg)]
    built = syn.build(plain, n_layers=2)
    aff = built["z"] @ built["z"].T
    fc = _fc_frame(cfg, affinity=aff)
    _write(tmp / "release", "fc", fc)
    _write(tmp / "release", "fa", _fa_frame(cfg, affinity=aff))
    released.run(cfg, Options())
    aggregate.run(cfg, Options(model=NAME))
    rsa.run(cfg, Options())
    validity.run(cfg, Options())
    return cfg, fc, built


def test_released_model_is_an_rsa_reference(e2e):
    cfg, _, built = e2e
    df = pd.read_parquet(paths.result_table(cfg, "rsa"))
    assert {f"fc:{NAME}", f"fa:{NAME}"} <= set(df.reference) and set(df.model) == {"m1", "m2"}
    ref = np.load(paths.matrix_file(cfg, NAME, "fc", "sim_ppmi"))
    valid = ~np.isnan(ref).all(axis=1)
    h = centered_cosine(built["hidden"]["m1", "meaning"][1].astype(np.float32), compute=np.float32)
    keep = np.outer(valid, valid)
    expected = comparison.compare(np.where(keep, h, np.nan), np.where(keep, ref, np.nan), "spearman")
    got = df.query(f"model == 'm1' and layer == 1 and reference == 'fc:{NAME}' and method == 'spearman'").rsa.item()
    assert got == pytest.approx(expected, abs=1e-5) and got > 0.2
    beh = pd.read_parquet(paths.result_table(cfg, "behavior_rsa"))
    assert {("m1", NAME), ("m2", NAME)} <= set(zip(beh.model_a, beh.model_b))
    rel = pd.read_parquet(paths.result_table(cfg, "reliability")).query(f"model == '{NAME}'")
    assert set(rel.paradigm) == {"fc", "fa"} and rel.reliability.notna().all()


def test_position_shares_come_from_the_released_order(e2e):
    cfg, fc, _ = e2e
    pos = pd.read_parquet(paths.result_table(cfg, "validity_position")).query(f"model == '{NAME}'")
    for s, group in fc.groupby(fc.candidates.map(len)):
        counts, first = np.zeros(s), np.zeros(s)
        for r in group.itertuples():
            cands = list(r.candidates)
            for j, p in enumerate(x for x in (r.pick_1, r.pick_2) if pd.notna(x)):
                counts[cands.index(p)] += 1
                first[cands.index(p)] += j == 0
        mine = pos.query(f"n_candidates == {s}").sort_values("position")
        np.testing.assert_allclose(mine.share, counts / counts.sum(), atol=1e-12)
        np.testing.assert_allclose(mine.first_share, first / first.sum(), atol=1e-12)
        plan_order = np.zeros(s)
        for r in group.itertuples():
            cands = list(r.candidates)[::-1]
            for p in (x for x in (r.pick_1, r.pick_2) if pd.notna(x)):
                plan_order[cands.index(p)] += 1
        assert not np.allclose(mine.share, plan_order / plan_order.sum())
    bias = pd.read_parquet(paths.result_table(cfg, "validity_bias")).query(f"model == '{NAME}'")
    assert bias.n_trials.item() == len(fc)


def test_report_names_the_released_models(e2e):
    from pipeline import report

    cfg, _, _ = e2e
    report.run(cfg, Options())
    md = (paths.report_dir(cfg) / "report.md").read_text()
    assert f"Released models (the authors' published trials, imported by the `released` stage; no weights here): " \
           f"{NAME}." in md
    comp = md.split("## Behavioral compliance", 1)[1].split("## ", 1)[0]
    assert f"| {NAME} | fc |" in comp
    section = md.split("## Behavioral geometry across models", 1)[1].split("\n## ", 1)[0]
    assert f"| {NAME} (released) |" in section


def test_command_line_runs_released_beside_behave(tmp_path, capsys):
    from pipeline import cli

    words = tmp_path / "words.txt"
    words.write_text("\n".join(syn.WORDS[:20]) + "\n")
    config = tmp_path / "exp.toml"
    config.write_text(f'[experiment]\nname = "t"\ndata_dir = "{tmp_path / "data"}"\n'
                      f'[vocab]\nsource = "{words}"\nsize = 20\n[trials]\nfc_candidates = 4\nfa_runs = 6\n'
                      f'[behave]\nbackend = "fake"\n[[models]]\nname = "m"\n'
                      f'[[released]]\npath = "{tmp_path / "release"}"\nmodels = ["{MODEL}"]\n'
                      f'[rsa]\nreferences = ["fc", "fa", "fc:{NAME}"]\n')
    for stage in ("vocab", "trials"):
        assert cli.main([stage, "--config", str(config)]) == 0
    assert cli.main(["released", "--config", str(config)]) == 2
    assert "no such file" in capsys.readouterr().err
    cfg = from_dict(__import__("tomllib").loads(config.read_text()), source=str(config))
    _write(tmp_path / "release", "fc", _fc_frame(cfg))
    _write(tmp_path / "release", "fa", _fa_frame(cfg))
    for stage in ("released", "behave", "aggregate", "released"):
        assert cli.main([stage, "--config", str(config)]) == 0, capsys.readouterr().err
    assert paths.matrix_file(cfg, NAME, "fc", "sim_ppmi").exists() and paths.matrix_file(cfg, "m", "fa").exists()
    assert cli.main(["aggregate", "--config", str(config), "--set", "released[0].max_mismatch=0.5"]) == 2
    err = capsys.readouterr().err
    assert f"behave/{NAME}/fc results" in err and "python -m pipeline released --config" in err
    assert cli.main(["released", "--config", str(config), "--set", "released[0].max_mismatch=0.5"]) == 0


def test_export_writes_the_released_matrices(e2e):
    from pipeline import export

    cfg, _, _ = e2e
    export.run(cfg, Options())
    exported = {p.name.split(".")[0] for p in (paths.export_dir(cfg) / NAME).iterdir()}
    assert {"fc_ppmi", "fa_ppmi"} <= exported

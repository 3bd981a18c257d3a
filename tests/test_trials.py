"""Trial plans: the paper's FC arithmetic and shuffles, the FA plan, and the stage."""

from __future__ import annotations

import math
import random

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from pipeline import paths, trials, vocab
from pipeline.cli import build_parser
from pipeline.errors import PipelineError
from pipeline.manifest import Manifest, StaleStageError
from pipeline.options import Options

N = 5000
SEED = 12345


def _opts(*extra):
    return Options.of(build_parser().parse_args(["trials", "--config", "test.toml", *extra]))


def _authors_groups(words, i, k=16, seed=SEED):
    """The authors' init_pools + chunk_list_balanced, written out independently."""
    idxs = list(range(len(words)))
    idxs.pop(i)
    random.Random(seed + i).shuffle(idxs)
    pool = [words[j] for j in idxs]
    n = len(pool)
    if n <= k:
        return [pool]
    m = math.ceil(n / k)
    base, r = n // m, n % m
    groups, start = [], 0
    for g in range(m):
        size = base + (1 if g < r else 0)
        groups.append(pool[start:start + size])
        start += size
    return groups


@pytest.fixture(scope="module")
def words5k():
    return [f"w{i:04d}" for i in range(N)]


@pytest.fixture(scope="module")
def plan5k(words5k):
    return trials.build_fc_plan(words5k, 16, SEED)


def test_group_sizes_paper_arithmetic():
    sizes = trials.fc_group_sizes(5000, 16)
    assert len(sizes) == 313
    assert list(sizes) == [16] * 304 + [15] * 9
    assert trials.fc_group_sizes(20, 16).tolist() == [10, 9]
    assert trials.fc_group_sizes(17, 16).tolist() == [16]


@pytest.mark.parametrize("n,k", [(2, 16), (17, 16), (18, 16), (33, 16), (99, 16), (100, 7), (1001, 2)])
def test_group_sizes_balanced(n, k):
    sizes = trials.fc_group_sizes(n, k)
    assert sizes.sum() == n - 1
    assert len(sizes) == math.ceil((n - 1) / k)
    assert sizes.max() <= k and sizes.max() - sizes.min() <= 1
    assert list(sizes) == sorted(sizes, reverse=True)


def test_fc_plan_5000_shape_and_ids(plan5k):
    assert plan5k.schema.equals(trials.FC_SCHEMA)
    assert plan5k.num_rows == 1_565_000
    tid = plan5k["trial_id"].to_numpy()
    cue = plan5k["cue_idx"].to_numpy()
    grp = plan5k["group"].to_numpy()
    assert np.array_equal(tid, np.arange(1_565_000))
    assert np.array_equal(tid, cue.astype(np.int64) * 313 + grp)
    assert np.array_equal(np.bincount(cue), np.full(N, 313))
    lens = pc.list_value_length(plan5k["candidates"]).to_numpy()
    assert np.array_equal(lens.reshape(N, 313), np.tile([16] * 304 + [15] * 9, (N, 1)))
    assert plan5k["cue"][4999 * 313].as_py() == "w4999" and plan5k["cue"][4999 * 313 - 1].as_py() == "w4998"


def test_fc_plan_5000_every_other_word_once_per_cue(plan5k, words5k):
    values = pa.chunked_array([c.flatten() for c in plan5k["candidates"].chunks])
    idx = pc.index_in(values, value_set=pa.array(words5k)).to_numpy(zero_copy_only=False)
    per_cue = np.sort(idx.reshape(N, N - 1), axis=1)
    cols = np.arange(N - 1)
    expected = cols[None, :] + (cols[None, :] >= np.arange(N)[:, None])
    assert np.array_equal(per_cue, expected)


@pytest.mark.parametrize("cue", [0, 1, 2, 1234, 2500, 4998, 4999])
def test_fc_plan_5000_equals_random_reference(plan5k, words5k, cue):
    rows = plan5k.slice(cue * 313, 313)
    assert set(rows["cue_idx"].to_pylist()) == {cue}
    assert rows["candidates"].to_pylist() == _authors_groups(words5k, cue)


def test_parallel_equals_sequential():
    words = [f"x{i}" for i in range(1200)]
    a = trials.build_fc_plan(words, 16, 7, workers=2)
    b = trials.build_fc_plan(words, 16, 7, workers=1)
    assert a.equals(b)
    assert a["candidates"][5].as_py() == _authors_groups(words, 0, seed=7)[5]


def test_fc_plan_depends_on_seed_and_small_vocab():
    words = [f"x{i}" for i in range(20)]
    a = trials.build_fc_plan(words, 16, SEED)
    assert a.num_rows == 40
    assert a["candidates"].to_pylist()[:2] == _authors_groups(words, 0)
    assert not a.equals(trials.build_fc_plan(words, 16, SEED + 1))


def test_fa_plan():
    words = ["dog", "cat", "tree"]
    t = trials.build_fa_plan(words, 4, 100)
    assert t.schema.equals(trials.FA_SCHEMA)
    assert t.num_rows == 12
    d = t.to_pydict()
    assert d["trial_id"] == list(range(12))
    assert d["cue_idx"] == [0] * 4 + [1] * 4 + [2] * 4
    assert d["cue"] == ["dog"] * 4 + ["cat"] * 4 + ["tree"] * 4
    assert d["run"] == [0, 1, 2, 3] * 3
    assert d["seed"] == [100, 101, 102, 103] * 3
    assert all(tid == c * 4 + r for tid, c, r in zip(d["trial_id"], d["cue_idx"], d["run"]))


def test_fa_plan_paper_size(words5k):
    t = trials.build_fa_plan(words5k, 126, SEED)
    assert t.num_rows == 630_000
    assert t["seed"].to_numpy().min() == SEED and t["seed"].to_numpy().max() == SEED + 125


def test_stage_writes_skips_and_loads(make_config):
    cfg = make_config()
    with pytest.raises(PipelineError, match="make vocab"):
        trials.run(cfg, _opts())
    vocab.run(cfg, _opts())
    trials.run(cfg, _opts())
    fc, fa = trials.load_trials(cfg, "fc"), trials.load_trials(cfg, "fa")
    words = vocab.load_run_vocab(cfg)
    assert fc.equals(trials.build_fc_plan(words, 16, SEED))
    assert fa.equals(trials.build_fa_plan(words, 3, SEED))
    assert fc["candidates"].to_pylist()[:2] == _authors_groups(words, 0)
    rec = Manifest(cfg.run_dir).stage("trials.fc")
    assert rec["complete"] and rec["summary"]["n_trials"] == 40
    mtime = paths.trials_file(cfg, "fc").stat().st_mtime_ns
    trials.run(cfg, _opts())
    assert paths.trials_file(cfg, "fc").stat().st_mtime_ns == mtime


def test_stage_fa_change_keeps_fc_plan(make_config):
    cfg = make_config()
    vocab.run(cfg, _opts())
    trials.run(cfg, _opts())
    fc_path = paths.trials_file(cfg, "fc")
    mtime = fc_path.stat().st_mtime_ns
    cfg2 = make_config(trials={"fa_runs": 5})
    with pytest.raises(StaleStageError, match="trials.fa"):
        trials.run(cfg2, _opts())
    trials.run(cfg2, _opts("--force"))
    assert fc_path.stat().st_mtime_ns == mtime
    assert trials.load_trials(cfg2, "fa").num_rows == 20 * 5
    with pytest.raises(PipelineError, match="another vocabulary or other trial settings"):
        trials.load_trials(cfg, "fa")


def test_stage_stale_seed_refused_then_forced(make_config):
    cfg = make_config()
    vocab.run(cfg, _opts())
    trials.run(cfg, _opts())
    old = trials.load_trials(cfg, "fc")
    cfg2 = make_config(trials={"fc_seed": 1})
    with pytest.raises(StaleStageError, match="--force"):
        trials.run(cfg2, _opts())
    assert trials.load_trials(cfg, "fc").equals(old)
    trials.run(cfg2, _opts("--force"))
    new = trials.load_trials(cfg2, "fc")
    assert not new.equals(old)
    assert new["candidates"].to_pylist()[:2] == _authors_groups(vocab.load_run_vocab(cfg2), 0, seed=1)


def test_stage_paradigm_filter_and_missing_plan(make_config):
    cfg = make_config(behave={"paradigms": ["fc"]})
    vocab.run(cfg, _opts())
    trials.run(cfg, _opts())
    assert paths.trials_file(cfg, "fc").exists()
    assert not paths.trials_file(cfg, "fa").exists()
    with pytest.raises(PipelineError, match="make trials CONFIG=test.toml"):
        trials.load_trials(cfg, "fa")


def test_stage_rebuilds_deleted_plan(make_config):
    cfg = make_config()
    vocab.run(cfg, _opts())
    trials.run(cfg, _opts())
    paths.trials_file(cfg, "fc").unlink()
    trials.run(cfg, _opts())
    assert trials.load_trials(cfg, "fc").num_rows == 40


def test_corrupt_plan_is_reported(make_config):
    cfg = make_config()
    vocab.run(cfg, _opts())
    trials.run(cfg, _opts())
    good = paths.trials_file(cfg, "fa").read_bytes()
    paths.trials_file(cfg, "fa").write_bytes(b"not parquet")
    with pytest.raises(PipelineError, match=r"fa\.parquet: the FA trial plan changed since the trials\.fa stage "
                                            r"wrote it.*pipeline trials --config"):
        trials.load_trials(cfg, "fa")
    trials.run(cfg, _opts())  # a finished stage whose output was damaged rebuilds it
    assert paths.trials_file(cfg, "fa").read_bytes() == good
    assert trials.load_trials(cfg, "fa").num_rows == 60


def test_too_few_candidates_for_picks(make_config):
    cfg = make_config(vocab={"size": 18}, trials={"fc_picks": 15, "fa_runs": 1}, behave={"paradigms": ["fa", "fc_scored"]})
    vocab.run(cfg, _opts())
    with pytest.raises(PipelineError, match="fewer than trials.fc_picks"):
        trials.run(cfg, _opts())


def test_fc_orders_one_is_the_paper_plan_byte_for_byte(make_config, tmp_path):
    cfg = make_config()
    vocab.run(cfg, _opts())
    trials.run(cfg, _opts())
    words = vocab.load_run_vocab(cfg)
    assert trials.build_fc_plan(words, 16, SEED, orders=1).equals(trials.build_fc_plan(words, 16, SEED))
    assert "fc_orders" not in trials.plan_inputs(cfg, "fc", words)
    trials.write_table(trials.build_fc_plan(words, 16, SEED, orders=1), tmp_path / "one.parquet")
    assert (tmp_path / "one.parquet").read_bytes() == paths.trials_file(cfg, "fc").read_bytes()


@pytest.mark.parametrize("orders", [2, 3, 4])
def test_fc_orders_rotate_every_group(orders):
    words = [f"w{i:02d}" for i in range(40)]  # 39 candidates per cue: groups of 13
    base = trials.build_fc_plan(words, 16, SEED)
    plan = trials.build_fc_plan(words, 16, SEED, orders=orders)
    n, m = len(words), 3
    assert plan.num_rows == orders * base.num_rows
    assert plan.slice(0, base.num_rows).equals(base)
    ids = plan.column("trial_id").to_numpy()
    assert (ids == np.arange(plan.num_rows)).all()
    assert (trials.fc_order(ids, n, m) == np.repeat(np.arange(orders), n * m)).all()
    assert plan.column("group").to_pylist() == base.column("group").to_pylist() * orders
    cands = plan.column("candidates").to_pylist()
    for t in range(base.num_rows):
        first = cands[t]
        s = len(first)
        positions = {w: set() for w in first}
        for j in range(orders):
            row = cands[j * n * m + t]
            shift = (j * s) // orders
            assert row == first[shift:] + first[:shift]
            for p, w in enumerate(row):
                positions[w].add(p)
        assert all(len(p) == orders for p in positions.values())


def test_fc_orders_in_fingerprint_and_refused_when_too_many(make_config):
    from pipeline.config import ConfigError

    cfg = make_config(trials={"fc_orders": 2})
    vocab.run(cfg, _opts())
    trials.run(cfg, _opts())
    words = vocab.load_run_vocab(cfg)
    assert trials.plan_inputs(cfg, "fc", words)["fc_orders"] == 2
    assert trials.load_trials(cfg, "fc").num_rows == 2 * 40
    assert Manifest(cfg.run_dir).stage("trials.fc")["summary"]["groups_per_cue"] == 2
    with pytest.raises(ConfigError, match="fc_orders"):
        make_config(trials={"fc_orders": 17})
    cfg = make_config(experiment={"name": "t2"}, vocab={"size": 18}, trials={"fc_orders": 9, "fa_runs": 1})
    vocab.run(cfg, _opts())
    with pytest.raises(PipelineError, match="would repeat orders"):
        trials.run(cfg, _opts())

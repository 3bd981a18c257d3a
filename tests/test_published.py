"""published: the shipped results of the paper and the matching of run models to them."""

from __future__ import annotations

from conftest import ROOT

from pipeline import published
from pipeline.config import ModelCfg, load_config


def test_shipped_tables_have_every_model_strategy_and_reference():
    rsa = published.rsa()
    assert set(rsa.paper_model) == set(published.PAPER_MODELS)
    assert set(rsa.strategy) == {"meaning", "task_fc", "task_fa", "averaged"}
    assert set(rsa.reference) == {"fc", "fa", "static", "encoder", "consensus"}
    llama = rsa.query("paper_model == 'Llama-3.1-8B-Instruct' and strategy == 'task_fc' and reference == 'fc'")
    assert llama.layer.tolist() == list(range(1, 33))
    # METHOD.md §8: mean over layers then over models, Task (FC) x FC = .463
    mean = rsa.query("strategy == 'task_fc' and reference == 'fc'").groupby("paper_model").rsa.mean().mean()
    assert round(mean, 3) == 0.463
    assert set(published.nn().k) == {5, 10, 20, 50, 100, 200}
    assert len(published.regression()) == 32 * 4


def test_match_by_name_hf_id_or_folder():
    paper = load_config(ROOT / "configs" / "paper.toml")
    assert len(published.match(paper.models)) == 8
    assert published.match([ModelCfg(name="mine", path="/models/Mistral-Nemo-Instruct-2407")]) == {
        "mine": "Mistral-Nemo-Instruct-v1"}
    assert published.match(load_config(ROOT / "configs" / "demo.toml").models) == {}


def test_svd_ablation_reproduces_method_md():
    """METHOD.md §8 "SVD / weighting ablation", Task-FA strategy, mean over layers (0 included)
    then models: FC counts .422, PPMI .455, SVD100-PPMI .445; FA counts .154, PPMI .197,
    SVD100-PPMI .241. The Task (FC) strategy was never run."""
    d = published.svd_variants()
    assert set(d.strategy) == {"averaged", "meaning", "task_fa"} and d.layer.min() == 0
    assert len(set(d.paper_model)) == 8 and set(d.n_pairs) == {500_000}
    t = d[d.strategy == "task_fa"].groupby(["paradigm", "variant", "paper_model"]).rsa.mean()
    t = t.groupby(level=[0, 1]).mean().round(3)
    assert (t["fc", "counts"], t["fc", "ppmi"], t["fc", "svd100_ppmi"]) == (0.422, 0.455, 0.445)
    assert (t["fa", "counts"], t["fa", "ppmi"], t["fa", "svd100_ppmi"]) == (0.154, 0.197, 0.241)

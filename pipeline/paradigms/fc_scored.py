"""Scored forced choice (beyond the paper): FC's trials answered by the model's probabilities.

Runs the FC plan and prompt; each trial is scored, not decoded (`scored`): one row per trial
with the first-pick distribution over its candidates (`logs.SCORED_SCHEMA`), chunk by chunk,
on a backend that can score. Counts (`behave.scored_counts`): each candidate's probability
after the list-position prior is divided out (``"debiased"``), as it is (``"expected"``), or
its `fc_picks` most probable candidates once each (``"top"``). Split halves as FC's.
"""

from __future__ import annotations

from ..prompts import prompt_hashes
from . import register
from .fc import ForcedChoice

_AGREEMENT = ("n_trials", "top2_same", "top1_first", "first_pick_rank", "first_pick_prob")


@register("fc_scored")
class ScoredForcedChoice(ForcedChoice):
    rank = 2
    label, short, title, color = "FC scored (probabilities)", "FC scored", "Scored FC", "#17becf"
    paper = False
    plan = "fc"
    scoring = True
    pipelined = False
    position_profile = "probs"
    feeds = ("fc",)

    def check_config(self, cfg) -> None:
        pass

    def log_schema(self):
        from ..logs import SCORED_SCHEMA

        return SCORED_SCHEMA

    def behave_settings(self, cfg, model_cfg) -> dict:
        from ..scored import ANSWER_PREFIX, SCORE_VERSION

        return dict(prompts=[prompt_hashes()["fc"]], answer_prefix=ANSWER_PREFIX, picks=cfg.trials.fc_picks,
                    scoring=SCORE_VERSION)

    def protocol(self, backend, cfg, model_cfg, words=None):
        return None

    def run_chunk(self, backend, cfg, model_cfg, trials, words=None, proto=None):
        from ..scored import run_trials

        return run_trials(backend, cfg, model_cfg, trials, self.name) if trials else self.log_schema().empty_table()

    def summarize(self, directory, cfg) -> dict:
        from ..scored import summarize

        return summarize(directory)

    def count_settings(self, cfg) -> dict:
        return {**self.split_settings(cfg), "picks": cfg.trials.fc_picks}

    def split_settings(self, cfg) -> dict:
        from ..scored import count_settings

        return count_settings(cfg)

    def count_options(self, cfg):
        return cfg.behave.scored_counts, cfg.trials.fc_picks, cfg.behave.scored_prior

    def count(self, src, words, rules, select=None, options=None):
        """Expected counts from the first-pick distributions (module docstring); `options` is
        (`behave.scored_counts`, `trials.fc_picks`[, `behave.scored_prior`]). Trials without a
        distribution (not finite) count nothing (`dropped_trials`)."""
        import numpy as np
        import pyarrow as pa
        import pyarrow.compute as pc

        from ..counts import Counter
        from ..logs import iter_final
        from ..scored import PositionPrior, debias, top_picks

        mode, k, *rest = options or ("expected", 2)
        prior_kind = rest[0] if rest else "mean"
        columns = ["cue_idx", "cue", "candidates", "probs", "logprobs"] + (["trial_id"] if select is not None else [])

        def batches():
            for batch in iter_final(src, columns):
                if select is not None and batch.num_rows:
                    batch = batch.filter(pa.array(np.asarray(select(batch), dtype=bool)))
                yield batch

        def flat(batch, name):
            return (np.asarray(pc.list_value_length(batch.column(name)).to_numpy(zero_copy_only=False), dtype=np.int64),
                    np.asarray(pc.list_flatten(batch.column(name)).to_numpy(zero_copy_only=False), dtype=np.float64))

        prior = None
        if mode == "debiased":
            est = PositionPrior(prior_kind)
            for batch in batches():
                batch = batch.filter(pc.is_valid(batch.column("probs")))
                if batch.num_rows:
                    est.add(*flat(batch, "logprobs"))
            prior = est.result()
        counter = Counter(words, self.name, rules, src, weighted=mode in ("expected", "debiased"))
        dropped = 0
        for batch in batches():
            has = pc.is_valid(batch.column("probs"))
            dropped += batch.num_rows - int(pc.sum(has).as_py() or 0)
            batch = batch.filter(has)
            if not batch.num_rows:
                continue
            if mode == "expected":
                counter.add(batch, picks=batch.column("candidates"), weights=pc.list_flatten(batch.column("probs")))
            elif mode == "debiased":
                counter.add(batch, picks=batch.column("candidates"),
                            weights=pa.array(debias(*flat(batch, "logprobs"), prior)))
            else:
                tops = [top_picks(c, p, k) for c, p in zip(batch.column("candidates").to_pylist(),
                                                            batch.column("probs").to_pylist())]
                counter.add(batch, picks=pa.array(tops, pa.list_(pa.string())))
        counts, cols, stats = counter.result()
        stats.update(dropped_trials=dropped, scored_counts=mode)
        if prior is not None:
            stats["position_prior"] = {str(s): [round(float(x), 6) for x in p] for s, p in sorted(prior.items())}
            stats["scored_prior"] = prior_kind
        return counts, cols, stats

    def extra_stats(self, cfg, model: str) -> dict:
        from ..scored import agreement

        return {"agreement_fc": agreement(cfg, model, self.plan_name, self.name)}

    # --- report ---

    def agreement(self, cfg):
        """Per model: scored FC against generated FC (`scored.agreement`, from the aggregate record)."""
        import pandas as pd

        from .. import keys
        from ..manifest import Manifest

        man = Manifest(cfg.run_dir)
        rows = []
        for m in cfg.models:
            agree = (man.summary(keys.aggregate(m.name, self.name)) or {}).get("agreement_fc")
            if agree:
                rows.append({"model": m.name, **{k: agree.get(k) for k in _AGREEMENT}})
        return pd.DataFrame(rows)

    def report_inputs(self, cfg) -> dict:
        return {"agreement": self.agreement(cfg).to_dict("records")} if self.name in cfg.behave.paradigms else {}

    def report_headline(self, cfg) -> dict:
        agree = self.agreement(cfg)
        if agree.empty:
            return {}
        return {"FC scored top-2 = FC picks": ", ".join(f"{r.top2_same:.1%} of {r.n_trials} trials ({r.model})"
                                                        for r in agree.itertuples())}

    def report_section(self, cfg, res) -> list[str]:
        """Scored FC beside generated FC: trial-level agreement and RSA side by side."""
        import pandas as pd

        from ..figures import METHOD_LABELS
        from ..report import md_table, primary_method, rsa_summary

        agree = self.agreement(cfg)
        rsa = res.get("rsa")
        has_rsa = rsa is not None and self.name in set(rsa.reference)
        if agree.empty and not has_rsa:
            return []
        lines = ["", "## Scored forced choice vs generated FC", "",
                 "Scored FC runs the FC trials and prompts but reads each candidate's probability as the first pick "
                 "(the answer `output: <candidate>,`) instead of generating; its geometry comes from the "
                 f"counts `behave.scored_counts = \"{cfg.behave.scored_counts}\"` (expected: the first-pick "
                 "probabilities; debiased: the same with the run's list-position prior divided out)."]
        if not agree.empty:
            lines += ["", "Agreement with the greedy FC answer of the same trial (trials where it is compliant): "
                          "`top2_same` = share whose two most probable candidates are FC's two picks; `top1_first` = "
                          "most probable candidate is FC's first pick; `first_pick_rank`, `first_pick_prob` = mean "
                          "rank and probability of FC's first pick in the scored distribution.", "", md_table(agree)]
        if has_rsa:
            method = primary_method(cfg, rsa)
            summ = rsa_summary(rsa, method)
            refs = (self.plan_name, self.name)
            summ = summ[summ.reference.isin(refs)]
            wide = summ.pivot_table(index=["model", "strategy"], columns="reference", values=["mean", "peak"],
                                    sort=False)
            table = pd.DataFrame(index=wide.index)
            for ref in refs:
                if ("mean", ref) in wide.columns:
                    table[f"{ref} mean"] = wide["mean", ref]
                    table[f"{ref} peak"] = wide["peak", ref]
            base, mine = (f"{r} mean" for r in refs)
            if {base, mine} <= set(table.columns):
                table[f"scored − {self.plan_name} (mean)"] = table[mine] - table[base]
            lines += ["", f"RSA of the hidden layers against each ({METHOD_LABELS.get(method, method)}, mean and peak "
                          "over layers):", "", md_table(table.reset_index())]
        return lines

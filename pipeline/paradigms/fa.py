"""Free association (METHOD.md §3): a cue; the model names `trials.fa_associates` associates.

Plan: `trials.build_fa_plan` (each cue once per seeded run). Protocol: one sampled request per
trial (no repair), parsed by `parse.parse_fa`; structured output constrains the answer to k
lowercase words. Counts: the parsed associates of each trial. Split halves: the parity of the run.
"""

from __future__ import annotations

import functools

from ..prompts import fa_prompt, prompt_hashes, prompt_sha
from . import register
from .base import Paradigm, Units


@functools.cache
def _protocol_class():
    from ..attempts import Protocol, derive_seed, fa_regex
    from ..backends import GenRequest
    from ..parse import parse_fa

    class FAProtocol(Protocol):
        repairs = False
        structured_min_tokens = 64

        def __init__(self, backend, cfg, model_cfg, words=None):
            super().__init__(backend, cfg, model_cfg)
            b = cfg.behave
            self.k = cfg.trials.fa_associates
            self.structured = b.structured_fa
            self.max_tokens = self.cap(b.fa_max_tokens, self.structured)
            self.fa_regex = fa_regex(self.k, words) if self.structured else None

        def request(self, trial, attempt, latest):
            text = self.render(fa_prompt(trial["cue"]))
            seed = derive_seed(trial["seed"], trial["cue_idx"])
            b = self.cfg.behave
            return (GenRequest(text=text, max_tokens=self.max_tokens, temperature=b.fa_temperature, top_p=b.fa_top_p,
                               seed=seed, allowed_regex=self.fa_regex, stage="fa"), prompt_sha(text), seed)

        def parse(self, trial, text):
            return parse_fa(text, trial["cue"], self.k)

    return FAProtocol


@register("fa")
class FreeAssociation(Paradigm):
    rank = 1
    label, short, title, color = "FA (behavior)", "FA", "FA", "#ff7f0e"
    paper = True
    na_answers = True

    def plan_schema(self):
        from ..trials import FA_SCHEMA

        return FA_SCHEMA

    def plan_inputs(self, cfg) -> dict:
        return {"fa_runs": cfg.trials.fa_runs, "fa_seed": cfg.trials.fa_seed}

    def build_plan(self, cfg, words):
        from ..trials import build_fa_plan

        return build_fa_plan(words, cfg.trials.fa_runs, cfg.trials.fa_seed), {"runs": cfg.trials.fa_runs}

    def units(self, cfg, n_words: int) -> Units:
        return Units("fa_runs", cfg.trials.fa_runs, 1, 1, None, cfg.validity.fa_trials_per_s)

    def halves(self, cfg, n_words: int, h: int):
        return lambda b: b.column("run").to_numpy(zero_copy_only=False).astype("int64") % 2 == h

    def behave_settings(self, cfg, model_cfg) -> dict:
        b = cfg.behave
        return dict(prompts=[prompt_hashes()["fa"]], structured=b.structured_fa, temperature=b.fa_temperature,
                    top_p=b.fa_top_p, max_tokens=b.fa_max_tokens, k=cfg.trials.fa_associates)

    def protocol(self, backend, cfg, model_cfg, words=None):
        return _protocol_class()(backend, cfg, model_cfg, words)

    def summarize(self, directory, cfg) -> dict:
        """Status counts and compliance, plus the paper's quality metrics: mean associates,
        full compliance (k associates) and cue repetition."""
        import pyarrow.compute as pc

        from ..behave import summarize_generated
        from ..logs import iter_final

        k = cfg.trials.fa_associates
        out, _ = summarize_generated(directory)
        n = out["n_trials"]
        n_assoc = full = cue_rep = 0
        for batch in iter_final(directory, ["picks", "cue"]):
            lens = pc.list_value_length(batch.column("picks")).to_numpy(zero_copy_only=False)
            n_assoc += int(lens.sum())
            full += int((lens == k).sum())
            for cue, picks in zip(batch.column("cue").to_pylist(), batch.column("picks").to_pylist()):
                cue_rep += cue.lower() in picks
        out.update(mean_associates=round(n_assoc / n, 3) if n else None,
                   full_compliance=round(full / n, 4) if n else None,
                   cue_repetition=round(cue_rep / n, 4) if n else None)
        return out

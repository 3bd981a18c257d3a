"""Forced choice (METHOD.md §2): a cue and a list of candidates; the model picks two.

Plan: `trials.build_fc_plan` (the authors' seeded shuffle cut into balanced groups, optionally
rotated `trials.fc_orders` times). Protocol: a greedy main pass, one greedy repair prompt, then
sampled retries (`attempts.Protocol`), answers parsed by `parse.parse_fc`; structured output
constrains them to two distinct candidates. Counts: the valid picks of each trial's final
attempt. Split halves: the parity of the candidate group.
"""

from __future__ import annotations

import functools

from ..prompts import fc_prompt, fc_repair_prompt, prompt_hashes, prompt_sha
from . import register
from .base import Paradigm, Units


@functools.cache
def _protocol_class():
    from ..attempts import Protocol, fc_choices, fc_regex
    from ..backends import GenRequest
    from ..parse import parse_fc

    class FCProtocol(Protocol):
        structured_min_tokens = 32

        def __init__(self, backend, cfg, model_cfg, words=None):
            super().__init__(backend, cfg, model_cfg)
            b = cfg.behave
            self.n_picks = cfg.trials.fc_picks
            self.structured = b.structured_fc
            self.max_tokens = self.cap(b.fc_max_tokens, self.structured)

        def request(self, trial, attempt, latest):
            cue, cands = trial["cue"], trial["candidates"]
            user = fc_prompt(cue, cands, self.n_picks) if attempt == 0 else \
                fc_repair_prompt(cue, cands, latest, self.n_picks)
            temperature, top_p, seed = self.sampling(attempt, self.cfg.trials.fc_seed, trial["trial_id"])
            text = self.render(user)
            req = GenRequest(text=text, max_tokens=self.max_tokens, temperature=temperature, top_p=top_p, seed=seed,
                             allowed_regex=fc_regex(cands) if self.structured else None,
                             allowed_choices=fc_choices(cands) if self.structured and self.choices else None,
                             stage="fc")
            return req, prompt_sha(text), seed

        def parse(self, trial, text):
            return parse_fc(text, trial["cue"], trial["candidates"], self.n_picks, self.rules)

    return FCProtocol


@register("fc")
class ForcedChoice(Paradigm):
    rank = 0
    label, short, title, color = "FC (behavior)", "FC", "FC", "#1f77b4"
    paper = True
    position_profile = "picks"
    rows_by_trial = True

    def check_config(self, cfg) -> None:
        from ..config import ConfigError

        t = cfg.trials
        if t.fc_picks != 2:
            raise ConfigError(f"{cfg.source}: 'trials.fc_picks' = {t.fc_picks}: generated FC ('fc' in "
                              f"behave.paradigms) asks for and parses exactly 2 picks, as the paper's prompt and "
                              f"extraction rules do; set trials.fc_picks = 2, or drop 'fc' from behave.paradigms "
                              f"and keep fc_scored, which scores any number of picks (e.g. paradigms = "
                              f"[\"fa\", \"fc_scored\"])")

    def plan_schema(self):
        from ..trials import FC_SCHEMA

        return FC_SCHEMA

    def plan_inputs(self, cfg) -> dict:
        t = cfg.trials
        orders = {"fc_orders": t.fc_orders} if t.fc_orders != 1 else {}
        return {"fc_candidates": t.fc_candidates, "fc_seed": t.fc_seed, **orders}

    def build_plan(self, cfg, words):
        from ..trials import build_fc_plan, check_fc_sizes, fc_group_sizes

        t = cfg.trials
        check_fc_sizes(cfg, len(words))
        table = build_fc_plan(words, t.fc_candidates, t.fc_seed, orders=t.fc_orders)
        return table, {"groups_per_cue": int(table.num_rows // len(words) // t.fc_orders),
                       **({"orders": t.fc_orders} if t.fc_orders != 1 else {}),
                       "group_sizes": sorted({int(s) for s in fc_group_sizes(len(words), t.fc_candidates)})}

    def units(self, cfg, n_words: int) -> Units:
        from ..trials import fc_group_sizes

        t, v = cfg.trials, cfg.validity
        sizes = fc_group_sizes(n_words, t.fc_candidates)
        return Units("fc_orders", t.fc_orders, len(sizes), len(fc_group_sizes(v.plan_words, t.fc_candidates)),
                     int(sizes.min()), v.fc_trials_per_s)

    def halves(self, cfg, n_words: int, h: int):
        from ..trials import fc_group_sizes

        m = len(fc_group_sizes(n_words, cfg.trials.fc_candidates))
        return lambda b: (b.column("trial_id").to_numpy().astype("int64") % m) % 2 == h

    def behave_settings(self, cfg, model_cfg) -> dict:
        from ..attempts import retry_sampling
        from ..rules import Rules

        b, hashes = cfg.behave, prompt_hashes()
        return dict(prompts=[hashes["fc"], hashes["fc_repair"]], structured=b.structured_fc, repair=b.repair,
                    retries=b.retries, max_tokens=b.fc_max_tokens, retry=retry_sampling(cfg, model_cfg),
                    seed=cfg.trials.fc_seed, picks=cfg.trials.fc_picks, rules=Rules.of(cfg).name)

    def protocol(self, backend, cfg, model_cfg, words=None):
        return _protocol_class()(backend, cfg, model_cfg, words)

    def summarize(self, directory, cfg) -> dict:
        """Status counts and compliance over the final rows; ``first_try_ok`` is the share
        compliant without repair or retries, ``ok_by_attempt`` the compliant trials by attempt."""
        from ..behave import summarize_generated

        out, attempts = summarize_generated(directory)
        n = out["n_trials"]
        out["ok_by_attempt"] = {int(a): c for a, c in sorted(attempts.items())}
        out["first_try_ok"] = round(attempts.get(0, 0) / n, 4) if n else None
        return out

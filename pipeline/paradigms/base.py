"""The interface every paradigm implements; a subclass registers itself (`paradigms.register`).

A paradigm answers, for the stages, everything that differs between FC, FA, scored FC and
the ones to come: which trial plan it runs and how that plan is built (`trials`), how one
trial's attempts become requests and parsed rows (`attempts`, the drivers), what its log
fingerprint holds and how its log is summarized (`behave`), how its final rows become a cue x
response count matrix and its split halves (`aggregate`, `rsa`), and the small facts the
other stages need (labels, whether it needs a scoring backend, whether its lists have
positions to profile). Defaults here are those of a generated paradigm with its own plan.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:  # stage modules import `config`, which lists the paradigms: imported lazily below
    import pyarrow as pa
    import scipy.sparse as sp

    from ..backends import Backend
    from ..config import Config, ModelCfg
    from ..rules import Rules


@dataclass(frozen=True)
class Units:
    """What one more unit of data per cue is, for the reliability planner (`validity.plan`).

    Attributes:
        key: the `trials` key that sets the units (``fc_orders``, ``fa_runs``).
        now: its value in this run.
        trials_run: trials per cue that one unit adds at this run's vocabulary size.
        trials_plan: the same at `validity.plan_words` words.
        most: the largest value the key takes (None: unbounded).
        rate: (low, high) trials per GPU-second (`validity.*_trials_per_s`).
    """
    key: str
    now: int
    trials_run: float
    trials_plan: float
    most: int | None
    rate: list[float]


class Paradigm:
    """One behavioral paradigm (subclasses override what differs).

    Attributes:
        name: the registered name (`behave.paradigms`, directory names, table rows).
        rank: the order of tables and figures (the paper's paradigms first).
        label / short / title / color: the report's legend entry, its short name (table
            cells), its name opening a sentence, and its colour.
        paper: one of the paper's own references (its feature sets, SVD ablation, exports and
            paper-mode common words).
        exported: the export stage writes its matrices even though it is not the paper's.
        plan: the paradigm whose trial plan this one runs (itself unless it re-answers
            another's trials, as scored FC does FC's).
        scoring: needs a backend that scores continuations (`Backend.scores`); models whose
            backend cannot are skipped (`Config.paradigms_of`).
        pipelined: its trials run through `attempts.ChunkRun` (repair/retry machinery, the
            pipelined driver); False: chunk by chunk through `run_chunk`.
        position_profile: what the validity stage profiles by list position: ``"picks"``
            (generated picks), ``"probs"`` (first-pick probabilities) or None.
        rows_by_trial: paper mode: a cue with any trial is a matrix row (FC), else only a
            cue with a valid response is (FA).
        na_answers: paper mode: whole answers that pandas reads as missing count nothing.
        feeds: other paradigms whose logs its counts also read (their parts join its fingerprint).
        config_keys: keys it adds to config sections, with defaults (their types are enforced),
            e.g. ``{"trials": {"triplet_trials": 24}}``; `check_config` validates their values.
    """

    name: str = ""
    rank: int = 100
    label: str = ""
    short: str = ""
    title: str = ""
    color: str = "#7f7f7f"
    paper: bool = False
    exported: bool = False
    plan: str | None = None
    scoring: bool = False
    pipelined: bool = True
    position_profile: str | None = None
    rows_by_trial: bool = False
    na_answers: bool = False
    feeds: tuple[str, ...] = ()
    config_keys: dict[str, dict[str, Any]] = {}

    @property
    def plan_name(self) -> str:
        return self.plan or self.name

    def check_config(self, cfg: Config) -> None:
        """Refuse settings this paradigm cannot run with (a `ConfigError`), when it is in
        `behave.paradigms`."""

    # --- trial plan (only the paradigm that owns a plan: `plan` is None) ---

    def plan_schema(self) -> pa.Schema:
        raise NotImplementedError

    def plan_inputs(self, cfg: Config) -> dict:
        """The trial settings the plan depends on (the words are added by `trials`)."""
        raise NotImplementedError

    def build_plan(self, cfg: Config, words: list[str]) -> tuple[pa.Table, dict]:
        """(plan table in `trial_id` order, extra facts for the manifest summary)."""
        raise NotImplementedError

    def units(self, cfg: Config, n_words: int) -> Units:
        """What more data per cue means for this paradigm (the reliability planner)."""
        raise NotImplementedError

    def halves(self, cfg: Config, n_words: int, h: int) -> Callable:
        """Selector of split half `h` (0 or 1): a function of a record batch of final rows
        (columns trial_id, run, cue_idx) returning a boolean mask."""
        raise NotImplementedError

    # --- behave ---

    def log_schema(self) -> pa.Schema:
        from ..logs import SCHEMA

        return SCHEMA

    def behave_settings(self, cfg: Config, model_cfg: ModelCfg) -> dict:
        """What this paradigm's log depends on besides the plan, model and backend."""
        raise NotImplementedError

    def protocol(self, backend: Backend, cfg: Config, model_cfg: ModelCfg, words: list[str] | None = None):
        """An `attempts.Protocol` for `pipelined` paradigms (None otherwise)."""
        return None

    def run_chunk(self, backend: Backend, cfg: Config, model_cfg: ModelCfg, trials: list[dict],
                  words: list[str] | None = None, proto=None) -> pa.Table:
        """One chunk of plan rows (as dicts) answered, as log rows (`log_schema`)."""
        from ..attempts import ChunkRun, generate

        if not trials:
            return self.log_schema().empty_table()
        run = ChunkRun(proto or self.protocol(backend, cfg, model_cfg, words), trials)
        while not run.done:
            items = run.take()
            results, latency = generate(backend, [it.request for it in items])
            for it, res in zip(items, results):
                run.record(it, res, latency)
        return run.table()

    def summarize(self, directory, cfg: Config) -> dict:
        """The manifest summary of a log directory (status counts, compliance, ...)."""
        raise NotImplementedError

    # --- aggregate ---

    def count_settings(self, cfg: Config) -> dict:
        """Settings beyond the rules that change this paradigm's counts (fingerprints of
        aggregate and split-half)."""
        return {}

    def count(self, src, words: list[str], rules: Rules, select=None, options: Any = None
              ) -> tuple[sp.csr_matrix, list[str], dict]:
        """Stream the final rows of a log into a cue x response count matrix
        (`aggregate.count_matrix` documents the contract); `options` is `count_options`."""
        from ..aggregate import count_picks

        return count_picks(src, words, self.name, rules, select)

    def split_settings(self, cfg: Config) -> dict:
        """Settings beyond the rules and the logs that change its split-half reliability."""
        return {}

    def count_options(self, cfg: Config) -> Any:
        """The config values `count` needs (kept apart so tests can call `count` without a config)."""
        return None

    def similarity_of(self, counts: sp.csr_matrix, stats: dict) -> Callable | None:
        """How its counts become the two similarity matrices: a function of ``"ppmi"`` (the RSA
        reference) or ``"counts"`` (the regression feature) returning float32 N x N with the
        rows and columns of unusable words NaN; None (the default) for the cosines of PPMI and
        count rows (`counts.write_outputs`)."""
        return None

    # --- report ---

    def report_inputs(self, cfg: Config) -> dict:
        """What the report reads about this paradigm beyond the result tables (its fingerprint)."""
        return {}

    def report_headline(self, cfg: Config) -> dict:
        """Extra {label: text} lines for the headline (the demo prints them)."""
        return {}

    def report_section(self, cfg: Config, res: dict) -> list[str]:
        """Markdown lines of this paradigm's own report section (none by default)."""
        return []

    def extra_stats(self, cfg: Config, model: str) -> dict:
        """Figures added to the aggregate's stats.json (e.g. agreement with another paradigm)."""
        return {}

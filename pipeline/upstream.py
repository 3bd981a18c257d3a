"""Before a stage runs on its own: are the upstream results it reads still what the config gives?

Later stages read what earlier ones froze into the run directory (the vocabulary, the trial
plans, the trial logs, the hidden states), not the config. So a stage run alone with a
changed upstream setting (``aggregate --set vocab.size=30``) would find its own work
complete and skip, or mix old results with new settings. `check` compares each upstream
stage's recorded settings fingerprint with the one the config gives now, and each file of
the vocabulary and trial plans with what its stage wrote, and refuses naming the stage to
re-run: without ``--force`` when that stage only restores an edited file, with ``--force``
(or a new ``experiment.name``) when a setting changed.
"""

from __future__ import annotations

import logging

from . import keys
from .config import Config, ReleasedModelCfg
from .errors import PipelineError
from .hidden import _fingerprint
from .manifest import Manifest, StaleStageError, fingerprint
from .options import Options
from .vocab import load_run_vocab, load_words, vocab_fingerprint

log = logging.getLogger(__name__)

_UPSTREAM = {
    "trials": ("vocab",),
    "released": ("vocab", "trials"),
    "behave": ("vocab", "trials"),
    "aggregate": ("vocab", "trials", "behave"),
    "sentences": ("vocab",),
    "hidden": ("vocab",),
    "baselines": ("vocab",),
    "rsa": ("vocab", "trials", "behave", "hidden"),
    "validity": ("vocab", "trials", "behave", "hidden"),
    "regress": ("vocab", "trials", "behave", "hidden"),
    "report": ("vocab", "trials", "behave", "hidden"),
    "export": ("vocab", "trials", "behave", "hidden"),
}


def check(cfg: Config, stage: str, opts: Options | None = None) -> None:
    """Refuse to run `stage` on upstream results that the current config would not produce.

    Only records that exist, of the models, paradigms and strategies that ``--model``,
    ``--paradigm`` and ``--strategy`` leave, are compared (a stage that never ran is the
    stage's own error to report); hidden states are checked for every model, since rsa and
    regress read the others' for the consensus. Nothing is written, so a finished run can be
    checked on read-only storage.

    Raises:
        StaleStageError: an upstream stage ran with other settings; the message names the
            changed config keys and the command to re-run.
        PipelineError: an upstream file was edited since its stage wrote it; the message names
            the stage that writes it again.
    """
    ups = _UPSTREAM.get(stage, ())
    if not ups:
        return
    man = Manifest(cfg.run_dir)
    data = man.read()
    stages = data.get("stages", {})
    if not stages:
        return
    for up in ups:
        for key, expected in _expected(cfg, up, stages, opts):
            rec = stages.get(key)
            if rec is None:
                continue
            if rec.get("inputs") != expected:
                redo = "released" if up == "behave" and key.split("/")[1] in _released(cfg) else up
                raise StaleStageError(
                    f"{stage}: the {key} results in {cfg.run_dir} were made with other settings than "
                    f"{cfg.source} gives now ({_changed(cfg, data.get('config'))}); {stage} reads them and would "
                    f"mix old and new. Re-run from that stage: `{keys.command(cfg, redo, force=True)}` and then the "
                    f"stages after it (or `{keys.command(cfg, 'all', force=True)}`), or use a new experiment.name to "
                    f"keep both runs")
            if up in ("vocab", "trials") and rec.get("complete"):
                problems = man.output_problems(rec)
                if problems:
                    raise PipelineError(
                        f"{stage}: {cfg.run_dir}/{problems[0]} (written by the {key} stage), so {stage} would read "
                        f"other input than it was built from; run `{keys.command(cfg, up)}` "
                        f"to write it again (its settings are unchanged, so nothing else is redone), then {stage}")


def _released(cfg: Config) -> set[str]:
    """Models whose `behave/...` records the `released` stage writes (`[[released]]`)."""
    return {m.name for m in cfg.models if isinstance(m, ReleasedModelCfg)}


def _expected(cfg: Config, up: str, stages: dict, opts: Options | None = None) -> list[tuple[str, str]]:
    """(record key, the settings fingerprint the config gives now) of each record of `up`."""
    o = opts or Options()
    if up == "vocab":
        words = _config_words(cfg)
        return [] if words is None else [(keys.VOCAB, fingerprint({"words": fingerprint(words), "size": len(words)}))]

    if not (cfg.run_dir / "vocab.txt").exists():
        return []
    if up == "trials":
        from .trials import plan_fingerprint, plan_of

        words = load_run_vocab(cfg)
        return [(keys.trials(p), plan_fingerprint(cfg, p, words))
                for p in dict.fromkeys(plan_of(p) for p in cfg.behave.paradigms)]
    if up == "behave":
        from .behave import behave_inputs

        out = []
        for m in cfg.models:
            for p in cfg.behave.paradigms:
                key = keys.behave(m.name, p)
                if o.model not in (None, m.name) or o.paradigm not in (None, p):
                    continue
                if key in stages:
                    out.append((key, fingerprint(behave_inputs(cfg, m, p))))
        return out

    vfp = vocab_fingerprint(cfg)
    out = []
    for m in cfg.models:
        for s in cfg.hidden.strategies:
            key = keys.hidden(m.name, s)
            if o.strategy not in (None, s):
                continue
            if key in stages and not m.behavior_only:
                try:
                    out.append((key, _fingerprint(cfg, m, s, vfp)))
                except OSError:
                    continue
    return out


def _config_words(cfg: Config) -> list[str] | None:
    """The words the vocab stage would freeze now, or None when the source cannot be read
    (then the vocab stage itself says so; a finished run stays readable without it)."""
    try:
        words = load_words(cfg.vocab.source)
    except (PipelineError, OSError):
        return None
    size = cfg.vocab.size if cfg.vocab.size is not None else len(words)
    return words[:size] if len(words) >= size else None


def _changed(cfg: Config, recorded: dict | None) -> str:
    """The config keys that differ from the snapshot the vocab stage recorded, for the message."""
    if not isinstance(recorded, dict):
        return "the config, vocabulary or prompts changed"
    diffs: list[str] = []

    def walk(a, b, prefix):
        if isinstance(a, dict) and isinstance(b, dict):
            for k in sorted(set(a) | set(b)):
                walk(a.get(k), b.get(k), f"{prefix}{k}.")
        elif isinstance(a, list) and isinstance(b, list) and len(a) == len(b) and all(
                isinstance(x, dict) for x in a + b):
            for i, (x, y) in enumerate(zip(a, b)):
                walk(x, y, f"{prefix}{x.get('name', i)}.")
        elif a != b:
            diffs.append(f"{prefix.rstrip('.')}: {b!r} -> {a!r}")

    walk(cfg.to_dict(), recorded, "")
    if not diffs:
        return "the prompts, vocabulary file or package versions changed"
    return "; ".join(diffs[:5]) + (f"; and {len(diffs) - 5} more" if len(diffs) > 5 else "")

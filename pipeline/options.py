"""Command-line options as one typed object, and the one function that turns them into the
models, paradigms and strategies an invocation works on.

Stages take ``opts`` from the CLI (an argparse namespace), from tests or from other code;
`Options.of` accepts any of these (or None) and fills in the defaults, so no stage reads an
option by name with a default of its own.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass

from . import keys
from .config import Config, ReleasedModelCfg
from .errors import PipelineError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Options:
    """What one invocation asks for besides the config (see `python -m pipeline --help`)."""

    model: str | None = None
    paradigm: str | None = None
    strategy: str | None = None
    shard: tuple[int, int] = (0, 1)
    engine: str = "local"
    address: str | None = None
    workers: int | None = None
    limit: int | None = None
    force: bool = False
    verbose: bool = False
    hidden: bool = False
    layers: tuple[int, ...] | None = None

    @classmethod
    def of(cls, opts=None) -> "Options":
        """`opts` as `Options`: an `Options`, any object with some of its attributes, or None."""
        if isinstance(opts, cls):
            return opts
        if opts is None:
            return cls()
        values = {}
        for f in dataclasses.fields(cls):
            v = getattr(opts, f.name, None)
            if v is not None:
                values[f.name] = tuple(v) if f.name in ("shard", "layers") else v
        return cls(**values)


@dataclass(frozen=True)
class Selection:
    """The models, paradigms and strategies of one invocation, in config order."""

    models: list[str]
    paradigms: list[str]
    strategies: list[str]


def select(cfg: Config, opts=None) -> Selection:
    """Narrow the config's models, paradigms and strategies by ``--model``, ``--paradigm``,
    ``--strategy``.

    Raises:
        PipelineError: the config has no models, or a named one is not in it (the message
            lists the valid names).
    """
    o = Options.of(opts)
    if not cfg.models:
        raise PipelineError(f"{cfg.source}: no [[models]] entries; add one (see configs/demo.toml)")
    models = [cfg.model(o.model).name] if o.model else [m.name for m in cfg.models]
    paradigms = [o.paradigm] if o.paradigm else list(cfg.behave.paradigms)
    if o.strategy and o.strategy not in cfg.hidden.strategies:
        raise PipelineError(f"--strategy {o.strategy}: not in hidden.strategies of {cfg.source} "
                            f"({', '.join(cfg.hidden.strategies)})")
    strategies = [o.strategy] if o.strategy else list(cfg.hidden.strategies)
    return Selection(models, paradigms, strategies)


def model_paradigms(cfg: Config, model: str, paradigms, stage: str, quiet: bool = False) -> list[str]:
    """`paradigms` less those `model` does not run (`Config.paradigms_of`: scoring paradigms on a
    backend that cannot score, a released model's paradigms beyond its entry's; in behave, every
    paradigm of a released model, whose logs are imported), with one line per stage for each left out.

    Args:
        stage: the stage name that prefixes the line.
        quiet: leave the line out (a second pass over the same model in one stage).
    """
    if stage == "behave" and isinstance(cfg.model(model), ReleasedModelCfg):
        if not quiet:
            log.info("behave %s: the authors' released trials, imported by `%s`; nothing to run", model,
                     keys.command(cfg, "released"))
        return []
    runs = cfg.paradigms_of(model)
    keep = [p for p in paradigms if p in runs or p not in cfg.behave.paradigms]
    left = [p for p in paradigms if p not in keep]
    if left and not quiet:
        m = cfg.model(model)
        why = (f"not among released[{m.entry}].paradigms (the authors' dataset holds FC and FA only)"
               if isinstance(m, ReleasedModelCfg) else
               f"backend '{cfg.backend_of(m)}' cannot score continuations (models of other backends score)")
        log.info("%s %s: %s skipped: %s", stage, model, ", ".join(left), why)
    return keep

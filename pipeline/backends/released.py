"""The backend of models whose trials are imported, not generated: the authors' released dataset.

A `[[released]]` entry (`config.ReleasedCfg`) adds its models to the config as behavior-only
models on this backend. Their trial logs come from the `released` stage (`pipeline.released`),
so `behave` runs nothing for them (`options.model_paradigms`); the backend exists so that
every question other stages ask a model's backend (does it score? does it need weights?) has
an answer, and so that a hand-written `[[models]]` table cannot claim it.
"""

from __future__ import annotations

from ..errors import PipelineError
from . import register
from .base import Backend


@register("released")
class ReleasedBackend(Backend):
    """Answers nothing: a released model's logs are imported (`python -m pipeline released`)."""

    rank = 10
    needs_weights = False
    scores = False
    stand_in = True

    @classmethod
    def create(cls, model_cfg=None, cfg=None, **overrides) -> "ReleasedBackend":
        name = getattr(model_cfg, "name", "?")
        source = getattr(cfg, "source", "CONFIG")
        raise PipelineError(f"model '{name}' replays the authors' released trials and generates nothing; its trial "
                            f"logs come from `python -m pipeline released --config {source}`")

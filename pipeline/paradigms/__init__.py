"""Behavioral paradigms behind one interface (`base.Paradigm`), named in `behave.paradigms`.

Each module of this package defines one paradigm class and registers it with
`@register("name")`, as `backends` does for generation backends (and lm-evaluation-harness
for its tasks): the class owns what is particular to its paradigm, from the trial plan to
how its logs become counts, so the stages (trials, behave, the Ray engine, aggregate, rsa,
regress, validity, report, export) ask the registry and never name a paradigm, and adding
one is adding a file. Modules keep their stage imports inside methods, so discovering them
is cheap and `config` can list them:

    fc         forced choice, generated answers (METHOD.md §2)
    fa         free association (METHOD.md §3)
    fc_scored  the FC trials answered by the model's probabilities (beyond the paper)
    triplet    triplet odd-one-out, generated answers, and its scored variant (Hebart et al. 2020)
"""

from __future__ import annotations

from ..registry import Registry
from .base import Paradigm

__all__ = ["Paradigm", "config_keys", "find", "get", "names", "paper_names", "register"]

_REGISTRY: Registry[Paradigm] = Registry(__name__, "paradigm", make=lambda cls: cls())


def register(name: str):
    """Class decorator: make a `Paradigm` subclass available as ``behave.paradigms = [name]``;
    the registry holds one instance (paradigms keep no state)."""
    return _REGISTRY.register(name)


def names() -> tuple[str, ...]:
    """Registered paradigm names, the paper's first (`Paradigm.rank`): the order of every table."""
    return tuple(_REGISTRY.names())


def paper_names() -> tuple[str, ...]:
    """The paper's own paradigms (`Paradigm.paper`): its feature sets, SVD ablation and exports."""
    return tuple(n for n in names() if _REGISTRY.entries[n].paper)


def get(name: str) -> Paradigm:
    """The paradigm registered as `name`.

    Raises:
        PipelineError: no such paradigm; names the registered ones.
    """
    return _REGISTRY.get(name)


def find(name: str) -> Paradigm | None:
    """The paradigm registered as `name`, or None (a norms matrix, a baseline)."""
    return _REGISTRY.find(name)


def config_keys(section: str) -> dict:
    """The keys paradigms add to a config section (``trials``, ``behave``) with their defaults
    (`Paradigm.config_keys`); `config` accepts and type-checks them like its own."""
    return {k: v for p in _REGISTRY.entries.values() for k, v in p.config_keys.get(section, {}).items()}

"""Manifest record keys of every stage, and the command that (re)builds each: one place, beside
`paths`, so that a stage records under the key a later stage reads, and a message names the
command that really rebuilds what it is missing.

A record key is the stage name, then what narrows it (``behave/<model>/<paradigm>``); the
trial plans use ``trials.<plan>``. `command` spells the CLI line (`cli`) that runs a stage
narrowed the same way.
"""

from __future__ import annotations

from .config import Config

VOCAB = "vocab"
SENTENCES = "sentences"
BEHAVIOR_RSA = "rsa/behavior"
RSA = "rsa"
REGRESS = "regress"
VALIDITY = "validity"
REPORT = "report"
CONSENSUS = "baselines/consensus"


def trials(plan: str) -> str:
    """A trial plan (``fc``, ``fa``)."""
    return f"trials.{plan}"


def behave(model: str, paradigm: str) -> str:
    """One model/paradigm trial log."""
    return f"behave/{model}/{paradigm}"


def aggregate(model: str, paradigm: str) -> str:
    """One model/paradigm's count and similarity matrices."""
    return f"aggregate/{model}/{paradigm}"


def norms(name: str) -> str:
    """One `[[norms]]` import."""
    return f"norms/{name}"


def hidden(model: str, strategy: str) -> str:
    """One model x strategy extraction."""
    return f"hidden/{model}/{strategy}"


def static(name: str) -> str:
    return f"baselines/static/{name}"


def encoder(name: str) -> str:
    return f"baselines/encoder/{name}"


def consensus(target: str, strategy: str) -> str:
    """The consensus of the other models for `target` (a model) and `strategy`."""
    return f"{CONSENSUS}/{target}/{strategy}"


def rsa_cell(model: str, strategy: str) -> str:
    """One model x strategy cell of the RSA and NN tables."""
    return f"{RSA}/{model}/{strategy}"


def reliability(model: str) -> str:
    return f"{RSA}/reliability/{model}"


def behavior_norms(model: str) -> str:
    return f"{RSA}/behavior_norms/{model}"


def svd_variants(model: str, strategy: str) -> str:
    return f"{RSA}/svd_variants/{model}/{strategy}"


def regress_cell(model: str, strategy: str) -> str:
    """One model x strategy cell of the regression table."""
    return f"{REGRESS}/{model}/{strategy}"


def export(model: str, name: str) -> str:
    return f"export/{model}/{name}"


def command(cfg: Config, stage: str, *, model: str | None = None, paradigm: str | None = None,
            strategy: str | None = None, force: bool = False) -> str:
    """The command line that runs `stage` on `cfg`'s experiment, narrowed like the record.

    Args:
        force: add ``--force`` (the stage replaces results made with other settings).
    """
    out = f"python -m pipeline {stage} --config {cfg.source}"
    for flag, value in (("--model", model), ("--paradigm", paradigm), ("--strategy", strategy)):
        if value is not None:
            out += f" {flag} {value}"
    return out + (" --force" if force else "")

"""Merged result tables: the parts of finished model x strategy cells concatenated into one
table each, recorded as one manifest record.

`rsa` and `regress` work cell by cell (each cell a part and a record of its own, so an
interrupted run keeps finished cells) and then merge. What both need from the manifest is
which cells finished (`finished`) and a record of the merge whose settings and upstream say
when the tables are already those parts merged (`merge`); `report` gathers the records'
summaries (`summaries`). Stages ask these instead of reading the manifest's stage records
themselves.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Hashable, Mapping

import pandas as pd

from .manifest import Manifest
from .store import write_parquet

log = logging.getLogger(__name__)


def finished(man: Manifest, records: Mapping[Hashable, str]) -> list:
    """The items of `records` (item -> record key) whose record is complete, in their order
    (one read of the manifest)."""
    stages = man.read()["stages"]
    return [item for item, key in records.items() if (stages.get(key) or {}).get("complete")]


def summaries(man: Manifest, records: Mapping[Hashable, str]) -> dict:
    """item -> the summary of its record (`records`: item -> record key), for the items whose
    record has one (one read of the manifest)."""
    stages = man.read()["stages"]
    return {item: s for item, key in records.items() if (s := (stages.get(key) or {}).get("summary"))}


def merge(man: Manifest, key: str, settings, upstream, tables: Mapping[Path, tuple[list[Path], list[str]]],
          done: int, cells: int, summary: dict) -> None:
    """Write each table as the concatenation of its parts, recorded as `key`.

    The record is completed only when every configured cell finished, so a run
    with cells still to come merges again next time; when complete and the record's settings
    and upstream match, nothing is rewritten. Under other settings the tables are rebuilt, not
    refused (`Step` ``replace_stale``): they are a pure function of the parts.

    Args:
        key: the record (`keys.RSA`, `keys.REGRESS`).
        settings: what the tables were merged under (the finished cells, the stage's settings).
        upstream: the content of the parts (`Manifest.ids`).
        tables: output path -> (its parts, the columns of an empty table); missing and empty
            parts are left out.
        done: the finished cells.
        cells: the configured cells.
        summary: the record's summary once complete.
    """
    complete = done == cells
    step = man.step(key, settings, upstream, replace_stale=True)
    if complete and step.done():
        return
    for out, (parts, columns) in tables.items():
        frames = [f for p in parts if p.exists() and not (f := pd.read_parquet(p)).empty]
        write_parquet(pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=columns), out)
    if complete:
        step.complete(list(tables), summary)
    else:
        log.info("%s: %d of %d model x strategy cells finished; tables hold those", key, done, cells)

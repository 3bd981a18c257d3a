"""`export` stage: analysis-ready copies of the similarity matrices, in three formats.

For every model x paradigm (FC, FA) x kind (`ppmi`: PPMI-cosine, the RSA reference;
`counts`: counts-cosine, the regression feature), under `export/<model>/`:

- `<paradigm>_<kind>.npz`: ``similarity`` (float32 N x N) and ``words`` (vocabulary order);
- `<paradigm>_<kind>.parquet`: long form ``word_a, word_b, similarity``, one row per
  upper-triangle pair (i < j, row-major), words dictionary-encoded;
- `<paradigm>_<kind>.h5`: an `rsatoolbox.rdm.RDMs` saved with its own `save` (HDF5), with
  dissimilarity = 1 - similarity, descriptors ``experiment, model, source, kind`` and the
  pattern descriptor ``word``. rsatoolbox's HDF5 writer only takes ASCII strings, so a
  vocabulary with other characters is stored ``unicode_escape``-encoded and the descriptor
  ``word_encoding`` says so (decode with ``codecs.decode(w, "unicode_escape")``).

plus `export/words.txt`. Hidden layers (centered cosine, METHOD.md §4) are exported only on
request, as `hidden_<strategy>_layer<l>.*`, because at the paper's scale each is 100 MB:

    python -m pipeline.export --config FILE [--hidden] [--layers 1,16,32] [--force]

Each model x source is recorded in the manifest (`export/<model>/<source>`); a re-run skips
finished exports and refuses, unless --force, to replace exports whose inputs changed.
"""

from __future__ import annotations

import argparse
import io
import logging
import os
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from . import paths
from .config import Config, load_config
from .errors import PipelineError
from .manifest import Manifest, atomic_write_bytes, fingerprint

log = logging.getLogger(__name__)

KINDS = {"ppmi": "sim_ppmi.npy", "counts": "sim_counts.npy"}
FORMATS = ("npz", "parquet", "h5")
_VERSION = 1


def write_npz(path: Path, sim: np.ndarray, words: list[str]) -> None:
    buf = io.BytesIO()
    np.savez(buf, similarity=np.asarray(sim, dtype=np.float32), words=np.array(words))
    atomic_write_bytes(path, buf.getvalue())


def write_long(path: Path, sim: np.ndarray, words: list[str]) -> None:
    """Upper triangle as (word_a, word_b, similarity) rows, built without Python strings per row."""
    n = len(words)
    i, j = np.triu_indices(n, k=1)
    dictionary = pa.array(words, pa.string())
    table = pa.table({
        "word_a": pa.DictionaryArray.from_arrays(pa.array(i.astype(np.int32)), dictionary),
        "word_b": pa.DictionaryArray.from_arrays(pa.array(j.astype(np.int32)), dictionary),
        "similarity": pa.array(np.asarray(sim, dtype=np.float32)[i, j]),
    })
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    atomic_write_bytes(path, buf.getvalue())


def write_rdm(path: Path, sim: np.ndarray, words: list[str], descriptors: dict[str, str]) -> None:
    """Save an rsatoolbox RDMs (dissimilarity 1 - similarity) with rsatoolbox's own HDF5 writer."""
    from rsatoolbox.rdm import RDMs

    n = len(words)
    i, j = np.triu_indices(n, k=1)
    ascii_ok = all(w.isascii() for w in words)
    stored = words if ascii_ok else [w.encode("unicode_escape").decode("ascii") for w in words]
    desc = {**descriptors, "word_encoding": "ascii" if ascii_ok else "unicode_escape"}
    rdm = RDMs((1.0 - np.asarray(sim, dtype=np.float64)[i, j])[None, :], dissimilarity_measure="1 - similarity",
               descriptors=desc, pattern_descriptors={"word": list(stored)})
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.unlink(missing_ok=True)
    try:
        rdm.save(str(tmp), file_type="hdf5")
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def load_rdm_words(rdm) -> list[str]:
    """The word list of an exported RDMs, decoded."""
    words = [str(w) for w in rdm.pattern_descriptors["word"]]
    if rdm.descriptors.get("word_encoding") == "unicode_escape":
        words = [w.encode("ascii").decode("unicode_escape") for w in words]
    return words


def export_matrix(out_stem: Path, sim: np.ndarray, words: list[str], descriptors: dict[str, str]) -> list[Path]:
    """Write one similarity matrix in every format; returns the files written."""
    files = [out_stem.with_suffix(f".{f}") for f in FORMATS]
    write_npz(files[0], sim, words)
    write_long(files[1], sim, words)
    write_rdm(files[2], sim, words, descriptors)
    return files


def _sources(cfg: Config, model: str, hidden: bool, layers) -> list[tuple[str, Path, int | None]]:
    out = [(f"{p}_{kind}", paths.matrices_dir(cfg, model, p) / fname, None)
           for p in ("fc", "fa") for kind, fname in KINDS.items()]
    if hidden:
        for strategy in cfg.hidden.strategies:
            h = paths.hidden_file(cfg, model, strategy)
            if not h.exists():
                raise PipelineError(f"{h}: hidden states of {model}/{strategy} are missing; run `python -m "
                                    f"pipeline hidden --config {cfg.source}` first or export without --hidden")
            n_layers = np.load(h, mmap_mode="r").shape[0] - 1
            chosen = layers or range(1, n_layers + 1)
            for layer in chosen:
                if not 1 <= layer <= n_layers:
                    raise PipelineError(f"--layers {layer}: {model}/{strategy} has layers 1..{n_layers}")
                out.append((f"hidden_{strategy}_layer{layer}", h, layer))
    return out


def run(cfg: Config, opts) -> None:
    """`export` stage: every behavioral matrix (and, with ``opts.hidden``, hidden layers)."""
    from .hidden import load_hidden
    from .hidden import rebuild_command as hidden_rebuild
    from .rsa import _layer_similarity
    from .store import load_npy
    from .vocab import load_run_vocab, vocab_fingerprint

    words = load_run_vocab(cfg)
    n = len(words)
    force = bool(getattr(opts, "force", False))
    man = Manifest(cfg.run_dir)
    root = paths.export_dir(cfg)
    atomic_write_bytes(root / "words.txt", "".join(w + "\n" for w in words).encode("utf-8"))
    models = [cfg.model(opts.model).name] if getattr(opts, "model", None) else [m.name for m in cfg.models]
    vfp = vocab_fingerprint(cfg)
    count = 0
    for model in models:
        for name, src, layer in _sources(cfg, model, bool(getattr(opts, "hidden", False)),
                                         getattr(opts, "layers", None)):
            if layer is None:
                paradigm = name.split("_")[0]
                rebuild = f"python -m pipeline aggregate --config {cfg.source} --model {model} --paradigm {paradigm}"
                desc = f"the {paradigm.upper()} similarity matrix of {model}"
            else:
                strategy = name.split("_layer")[0].removeprefix("hidden_")
                rebuild = hidden_rebuild(cfg, model, strategy)
                desc = f"hidden states of {model}/{strategy}"
            key = f"export/{model}/{name}"
            fp = fingerprint({"version": _VERSION, "vocab": vfp, "layer": layer})
            up = man.require(src, desc, rebuild)
            stem = root / model / name
            if man.check(key, fp, force, upstream=up):
                continue
            man.start(key, fp, up)
            if layer is None:
                sim = load_npy(src, desc, rebuild, shape=(n, n), finite="rows")
                what = "cosine of PPMI rows" if name.endswith("ppmi") else "cosine of count rows"
            else:
                sim = _layer_similarity(load_hidden(cfg, model, strategy, n_words=n)[layer])
                what = f"mean-centered cosine of layer {layer}"
            files = export_matrix(stem, sim, words, {"experiment": cfg.experiment.name, "model": model,
                                                     "source": name, "kind": what})
            man.complete(key, fp, {"files": [str(f.relative_to(cfg.run_dir)) for f in files]}, outputs=files,
                         upstream=up)
            count += 1
    log.info("export: %d matrices written under %s", count, root)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m pipeline.export", description=__doc__.splitlines()[0])
    p.add_argument("--config", required=True)
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--model")
    p.add_argument("--hidden", action="store_true", help="also export hidden-layer centered cosines")
    p.add_argument("--layers", type=lambda s: [int(x) for x in s.split(",")], default=None,
                   help="hidden layers to export, e.g. 1,16,32 (default: all)")
    p.add_argument("--force", action="store_true")
    opts = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    try:
        run(load_config(opts.config, opts.overrides), opts)
    except PipelineError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

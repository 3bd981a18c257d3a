"""`export` stage: analysis-ready copies of the similarity matrices, in three formats.

For every model x paradigm (the paper's FC and FA, and any other that is `Paradigm.exported`
and that the model runs) x kind (`ppmi`: PPMI-cosine, the RSA reference;
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

    python -m pipeline export --config FILE [--hidden] [--layers 1,16,32] [--force]

Each model x source is recorded in the manifest (`export/<model>/<source>`); a re-run skips
finished exports and refuses, unless --force, to replace exports whose inputs changed.
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from . import keys, paths
from .config import Config
from .errors import PipelineError
from .hidden import load_hidden
from .manifest import Manifest
from .options import Options, select
from .paradigms import get as get_paradigm
from .paradigms import names
from .similarity import centered_cosine
from .store import atomic_write, atomic_write_bytes, load_npy
from .vocab import load_run_vocab, vocab_fingerprint

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
    atomic_write(path, lambda tmp: rdm.save(str(tmp), file_type="hdf5"))


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


@dataclass(frozen=True)
class _Source:
    name: str
    path: Path
    what: str
    rebuild: str
    layer: int | None = None
    strategy: str | None = None


def _sources(cfg: Config, model: str, hidden: bool, layers) -> list[_Source]:

    out = []
    for p in [p for p in names() if get_paradigm(p).paper
              or (get_paradigm(p).exported and p in cfg.paradigms_of(model))]:
        rebuild = keys.command(cfg, "aggregate", model=model, paradigm=p)
        for kind in KINDS:
            out.append(_Source(f"{p}_{kind}", paths.matrix_file(cfg, model, p, f"sim_{kind}"),
                               f"the {p.upper()} {kind}-cosine matrix of {model}", rebuild))
    if hidden:
        for strategy in cfg.hidden.strategies:
            n_layers = load_hidden(cfg, model, strategy).shape[0] - 1
            for layer in layers or range(1, n_layers + 1):
                if not 1 <= layer <= n_layers:
                    raise PipelineError(f"--layers {layer}: {model}/{strategy} has layers 1..{n_layers}")
                out.append(_Source(f"hidden_{strategy}_layer{layer}", paths.hidden_file(cfg, model, strategy),
                                   f"hidden states of {model}/{strategy}",
                                   keys.command(cfg, "hidden", model=model, strategy=strategy),
                                   layer, strategy))
    return out


def _partial(cfg: Config, man: Manifest, model: str, src: _Source) -> dict:
    """For a behavioral matrix whose trial log behave has not completed (``--limit``, an
    interrupted run, shards still running): a warning and the summary fields that say so."""
    import json

    paradigm = src.name.rsplit("_", 1)[0]
    rec = man.stage(keys.behave(model, paradigm)) or {}
    if rec.get("complete"):
        return {}
    planned = ((man.stage(keys.trials(get_paradigm(paradigm).plan_name)) or {}).get("summary") or {}).get("n_trials")
    try:
        done = json.loads((src.path.parent / "stats.json").read_text())["trials"]
    except (OSError, ValueError, KeyError, TypeError):
        done = None
    log.warning("export %s/%s: partial matrix: the %s log holds %s of %s planned trials (behave has not completed: "
                "--limit, an interrupted run or shards still running); run `%s`, then aggregate and export again",
                model, src.name, paradigm.upper(), done if done is not None else "some",
                planned if planned is not None else "its", keys.command(cfg, "behave", model=model, paradigm=paradigm))
    return {"partial": True, "behave_trials": done, "planned_trials": planned}


def run(cfg: Config, opts: Options) -> None:
    """`export` stage: every behavioral matrix (and, with ``--hidden``, hidden layers)."""
    words = load_run_vocab(cfg)
    n = len(words)
    man = Manifest(cfg.run_dir)
    root = paths.export_dir(cfg)
    listing = "".join(w + "\n" for w in words).encode("utf-8")
    if not (root / "words.txt").is_file() or (root / "words.txt").read_bytes() != listing:
        atomic_write_bytes(root / "words.txt", listing)
    vfp = vocab_fingerprint(cfg)
    count = 0
    for model in select(cfg, opts).models:
        hidden = opts.hidden and not cfg.model(model).behavior_only
        if opts.hidden and not hidden:
            log.info("export %s: behavior-only model (no weights): no hidden layers to export", model)
        for src in _sources(cfg, model, hidden, opts.layers):
            step = man.step(keys.export(model, src.name), {"version": _VERSION, "vocab": vfp, "layer": src.layer},
                            man.require(src.path, src.what, src.rebuild), opts.force)
            if step.done():
                continue
            step.start()
            if src.layer is None:
                sim = load_npy(src.path, src.what, src.rebuild, shape=(n, n), finite="rows")
                what = "cosine of PPMI rows" if src.name.endswith("ppmi") else "cosine of count rows"
            else:
                sim = centered_cosine(load_hidden(cfg, model, src.strategy, n_words=n)[src.layer], compute=np.float32)
                what = f"mean-centered cosine of layer {src.layer}"
            partial = _partial(cfg, man, model, src) if src.layer is None else {}
            files = export_matrix(root / model / src.name, sim, words,
                                  {"experiment": cfg.experiment.name, "model": model, "source": src.name, "kind": what,
                                   **({"partial": "true"} if partial else {})})
            step.complete(files, {"files": [str(f.relative_to(cfg.run_dir)) for f in files], **partial})
            count += 1
    log.info("export: %d matrices written under %s", count, root)

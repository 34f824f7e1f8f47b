"""A real interrupt: `atlas optimize` in a subprocess, its models behind a loopback
OpenAI-compatible server, stopped with SIGINT mid-rollout, then run again with the same command.
The second run resumes on the same budget: every answered model call is in the ledger once."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import orjson
import pytest

from tests.optimize import world


class WorldServer:
    """The deterministic world of tests/optimize/world.py behind /v1/chat/completions; the
    model name says who is asked. ``hold_after``: requests past this many wait until released."""

    def __init__(self, hold_after: int | None = None, port: int = 0) -> None:
        self.hold_after = hold_after
        self.release = threading.Event()
        self.received = 0
        self.answered = 0
        self.held = threading.Event()
        self.lock = threading.Lock()
        self.models = {
            "student": world.student(),
            "teacher": world.teacher(),
            "reflector": world.reflection(),
        }
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with server.lock:
                    server.received += 1
                    number = server.received
                if server.hold_after is not None and number > server.hold_after:
                    server.held.set()
                    server.release.wait(240)
                    with contextlib.suppress(OSError):  # the client is gone by now
                        self.send_error(503)
                    return
                model = server.models[body["model"]]
                text = model.respond(body["messages"])
                reply = {
                    "model": body["model"],
                    "choices": [
                        {"message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
                    ],
                    "usage": {"prompt_tokens": 10, "completion_tokens": 2},
                }
                data = json.dumps(reply).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
                with server.lock:
                    server.answered += 1

        self.httpd = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> WorldServer:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()


def command(tasks, out, url, timeout: str = "30s") -> list[str]:
    spec = "openai-compatible:" + url + "|{}"
    return [
        sys.executable, "-m", "atlas_middleware.cli", "optimize",
        "--tasks", str(tasks), "--out", str(out), "--max-calls", "150", "--judges", "accuracy",
        "--student", spec.format("student"), "--teacher", spec.format("teacher"),
        "--reflection", spec.format("reflector"), "--timeout", timeout, "--json",
    ]  # fmt: skip


# The waits below are on events (the 10th call held, the process exited); their bounds only stop
# a hung run, so they are generous: a loaded machine slows the interpreter's exit, not the logic.
@pytest.mark.timeout(900)
def test_sigint_mid_run_then_the_same_command_resumes(tmp_path):
    tasks = tmp_path / "tasks.jsonl"
    tasks.write_text("".join(orjson.dumps(t.to_json()).decode() + "\n" for t in world.tasks()))
    out = tmp_path / "prompts"
    env = {**os.environ, "COLUMNS": "120"}

    with WorldServer(hold_after=9) as server:
        # The held call must outlast the interrupt's delivery on a starved machine (a run there
        # once took 2 minutes for 8 calls): its timeout is far beyond the SIGINT's path.
        proc = subprocess.Popen(
            command(tasks, out, server.url, timeout="180s"),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
        )  # fmt: skip
        try:
            assert server.held.wait(300), "the run never reached its 10th model call"
            proc.send_signal(signal.SIGINT)  # Ctrl-C while a rollout waits for its model
            _, stderr = proc.communicate(timeout=300)
        finally:
            proc.kill()
        first_answered = server.answered
        port = server.httpd.server_address[1]

    assert proc.returncode == 130, stderr
    assert "interrupted: run the same command to resume" in stderr
    state = orjson.loads((out / "run" / "state.json").read_bytes())
    assert state["status"] == "running"
    assert state["ledger"]["total"]["calls"] == first_answered == 9

    # The same endpoint again (the model specs are part of what a run is resumed with).
    with WorldServer(port=port) as server:
        done = subprocess.run(
            command(tasks, out, server.url, timeout="180s"),
            capture_output=True,
            text=True,
            env=env,
            timeout=600,
        )
        second_answered = server.answered
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["resumed"] and summary["adopted"]
    # One budget over both runs: every call either run paid for is counted, once.
    assert summary["usage"]["total"]["calls"] == first_answered + second_answered
    assert summary["usage"]["roles"]["student"]["input_tokens"] > 0
    assert re.search(r"HINT", (out / "active.yaml").read_text())


def test_a_model_that_cannot_be_reached_ends_the_run_in_one_line(tmp_path):
    from tests.helpers import free_port

    tasks = tmp_path / "tasks.jsonl"
    tasks.write_text("".join(orjson.dumps(t.to_json()).decode() + "\n" for t in world.tasks()))
    url = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens there
    done = subprocess.run(
        command(tasks, tmp_path / "prompts", url), capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 1
    [line] = done.stderr.strip().splitlines()[-1:]
    assert line.startswith("atlas: error: a model call failed: student: cannot reach")
    assert "run the same command to resume" in line
    assert "Traceback" not in done.stderr

"""A stand-in for the Kubeflow Pipelines API server: HTTP on 127.0.0.1, a free port, its own thread.

It answers the v2beta1 calls the kfp 2.5 client makes (read in kfp/client/client.py and kfp_server_api 2.0.5):
  GET  /apis/v2beta1/healthz                         Client() probes it when no namespace is configured
  GET  /apis/v2beta1/experiments?filter=...          create_experiment / get_experiment look the name up
  POST /apis/v2beta1/experiments                     create_experiment when the name is new
  POST /apis/v2beta1/runs                            run_pipeline (pipeline_spec inline, runtime_config)
  POST /apis/v2beta1/recurringruns                   create_recurring_run (trigger.cron_schedule, ...)
  GET  /apis/v2beta1/recurringruns?experiment_id=... list_recurring_runs
  POST /apis/v2beta1/recurringruns/{id}:disable      disable_recurring_run
Every request is recorded; `fail()` makes a route answer an error in the server's JSON shape. The server
stops when its `with` block ends, or by itself after `lifetime_s` if a test never closes it.
"""
from __future__ import annotations

import json
import threading
import urllib.parse
import uuid
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

API = "/apis/v2beta1"
CREATED_AT = "2024-01-01T00:00:00Z"


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]  # names in lower case
    body: Any


class FakeKfpServer:
    def __init__(self, lifetime_s: float = 120.0):
        self.requests: list[Request] = []
        self.experiments: dict[str, dict] = {}
        self.recurring_runs: dict[str, dict] = {}
        self._failures: dict[tuple[str, str], tuple[int, str]] = {}
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._timer = threading.Timer(lifetime_s, self.stop)
        self._timer.daemon = True

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> "FakeKfpServer":
        self._thread.start()
        self._timer.start()
        return self

    def stop(self) -> None:
        self._timer.cancel()
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> "FakeKfpServer":
        return self.start()

    def __exit__(self, *exc_info: Any) -> None:
        self.stop()

    def fail(self, method: str, path: str, status: int, message: str) -> None:
        """Answer `method path` (e.g. "POST", "/runs") with `status` and a grpc-gateway error body."""
        self._failures[(method, API + path)] = (status, message)

    def calls(self, method: str | None = None, path: str | None = None) -> list[Request]:
        return [r for r in self.requests if (method is None or r.method == method)
                and (path is None or r.path == API + path)]

    def handle(self, method: str, path: str, query: dict[str, list[str]], body: Any) -> tuple[int, Any]:
        if (method, path) in self._failures:
            status, message = self._failures[(method, path)]
            return status, {"error": message, "code": 3 if status < 500 else 13, "message": message, "details": []}
        route = path[len(API):] if path.startswith(API) else path
        with self._lock:
            if (method, route) == ("GET", "/healthz"):
                return 200, {"commit_sha": "fake", "tag_name": "2.0.5", "multi_user": False}
            if (method, route) == ("GET", "/experiments"):
                return 200, self._list_experiments(query)
            if (method, route) == ("POST", "/experiments"):
                experiment = {"experiment_id": str(uuid.uuid4()), "display_name": body["display_name"],
                              "created_at": CREATED_AT, "storage_state": "AVAILABLE"}
                self.experiments[experiment["experiment_id"]] = experiment
                return 200, experiment
            if (method, route) == ("POST", "/runs"):
                return 200, {**body, "run_id": str(uuid.uuid4()), "state": "PENDING", "created_at": CREATED_AT}
            if (method, route) == ("POST", "/recurringruns"):
                recurring_run = {**body, "recurring_run_id": str(uuid.uuid4()), "status": "ENABLED",
                                 "created_at": CREATED_AT}
                self.recurring_runs[recurring_run["recurring_run_id"]] = recurring_run
                return 200, recurring_run
            if (method, route) == ("GET", "/recurringruns"):
                experiment_id = query.get("experiment_id", [None])[0]
                found = [r for r in self.recurring_runs.values() if experiment_id in (None, r["experiment_id"])]
                return 200, {"recurringRuns": found, "total_size": len(found)}
            if method == "POST" and route.startswith("/recurringruns/") and route.endswith(":disable"):
                recurring_run_id = route[len("/recurringruns/"):-len(":disable")]
                if recurring_run_id not in self.recurring_runs:
                    message = f"recurring run {recurring_run_id} not found"
                    return 404, {"error": message, "code": 5, "message": message}
                self.recurring_runs[recurring_run_id].update(mode="DISABLE", status="DISABLED")
                return 200, {}
        return 404, {"error": f"fake server: no route for {method} {path}", "code": 5}

    def _list_experiments(self, query: dict[str, list[str]]) -> dict:
        experiments = list(self.experiments.values())
        for predicate in json.loads(query.get("filter", ["{}"])[0] or "{}").get("predicates", []):
            experiments = [e for e in experiments if e.get(predicate["key"]) == predicate.get("stringValue")]
        return {"experiments": experiments, "total_size": len(experiments)}


def _handler_for(server: FakeKfpServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def _answer(self) -> None:
            url = urllib.parse.urlsplit(self.path)
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            body = json.loads(raw) if raw else None
            query = urllib.parse.parse_qs(url.query)
            headers = {name.lower(): value for name, value in self.headers.items()}
            server.requests.append(Request(self.command, url.path, query, headers, body))
            status, payload = server.handle(self.command, url.path, query, body)
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = do_DELETE = _answer

        def log_message(self, *args: Any) -> None:
            """Quiet: the test reads `server.requests` instead."""

    return Handler

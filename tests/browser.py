"""Headless Chromium driven over the DevTools protocol, for tests that open a page as a user's browser would.

The protocol, not Chromium's `--enable-logging=stderr` output: it reports console errors, uncaught exceptions and
failed or blocked loads (CSP violations among them) as typed events of the page being tested, where stderr mixes
them with the browser's own start-up noise (D-Bus, GPU, the launcher script) in a format no release promises.
The same session gives the page's text and a full-page screenshot. `make browser` installs Debian's chromium.
"""
from __future__ import annotations

import base64
import json
import shutil
import subprocess
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import websocket

CHROMIUM = "chromium"
START_TIMEOUT_S = 30.0
LOAD_TIMEOUT_S = 30.0


@dataclass
class PageVisit:
    url: str
    text: str  # document.body.innerText
    errors: list[str]  # console errors, uncaught exceptions, error log entries (failed loads, CSP violations)
    requests: list[str]  # every URL the page asked for, the page itself included
    screenshot: bytes = field(repr=False, default=b"")  # PNG of the whole page


def chromium_path() -> str | None:
    return shutil.which(CHROMIUM)


class _DevTools:
    def __init__(self, websocket_url: str):
        self._socket = websocket.create_connection(websocket_url, timeout=LOAD_TIMEOUT_S, suppress_origin=True)
        self._next_id = 0
        self.events: list[dict] = []

    def call(self, method: str, **params) -> dict:
        self._next_id += 1
        self._socket.send(json.dumps({"id": self._next_id, "method": method, "params": params}))
        while True:
            message = json.loads(self._socket.recv())
            if message.get("id") == self._next_id:
                if "error" in message:
                    raise RuntimeError(f"DevTools {method}: {message['error']}")
                return message.get("result", {})
            self.events.append(message)

    def wait_for(self, method: str, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while not any(event.get("method") == method for event in self.events):
            if time.monotonic() > deadline:
                raise TimeoutError(f"no {method} within {timeout_s} s")
            self.events.append(json.loads(self._socket.recv()))

    def close(self) -> None:
        self._socket.close()


def visit(path: str | Path, width: int = 1280) -> PageVisit:
    """Opens a local file in a fresh headless Chromium and reports what a user's browser would have seen."""
    url = Path(path).resolve().as_uri()
    profile = tempfile.mkdtemp(prefix="terrafuse-chromium-")
    # --no-sandbox: the test machines run as root, where Chromium refuses its sandbox. Port 0: a free port, which
    # Chromium writes to DevToolsActivePort in the profile.
    process = subprocess.Popen(
        [CHROMIUM, "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run", "--no-default-browser-check",
         "--remote-debugging-port=0", f"--user-data-dir={profile}", f"--window-size={width},900", "about:blank"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        port = _devtools_port(Path(profile), process)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as answer:
            (page,) = [target for target in json.load(answer) if target["type"] == "page"]
        tools = _DevTools(page["webSocketDebuggerUrl"])
        try:
            for domain in ("Page", "Runtime", "Log", "Network"):
                tools.call(f"{domain}.enable")
            tools.call("Page.navigate", url=url)
            tools.wait_for("Page.loadEventFired", LOAD_TIMEOUT_S)
            text = tools.call("Runtime.evaluate", expression="document.body.innerText",
                              returnByValue=True)["result"]["value"]
            shot = tools.call("Page.captureScreenshot", format="png", captureBeyondViewport=True)
            return PageVisit(url, text, _errors(tools.events), _requests(tools.events), base64.b64decode(shot["data"]))
        finally:
            tools.close()
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        shutil.rmtree(profile, ignore_errors=True)


def _devtools_port(profile: Path, process: subprocess.Popen) -> int:
    deadline = time.monotonic() + START_TIMEOUT_S
    marker = profile / "DevToolsActivePort"
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{CHROMIUM} exited with {process.returncode} before opening DevTools")
        if marker.exists() and marker.read_text().strip():
            return int(marker.read_text().split()[0])
        time.sleep(0.1)
    raise TimeoutError(f"{CHROMIUM} opened no DevTools port within {START_TIMEOUT_S} s")


def _errors(events: list[dict]) -> list[str]:
    found = []
    for event in events:
        method, params = event.get("method"), event.get("params", {})
        if method == "Runtime.exceptionThrown":
            found.append("exception: " + params["exceptionDetails"].get("text", ""))
        elif method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
            found.append("console: " + " ".join(str(a.get("value", a.get("description", ""))) for a in params["args"]))
        elif method == "Log.entryAdded" and params["entry"]["level"] == "error":
            found.append(f"log ({params['entry']['source']}): {params['entry']['text']}")
        elif method == "Network.loadingFailed":
            found.append(f"load failed: {params.get('errorText')} {params.get('blockedReason', '')}".strip())
    return found


def _requests(events: list[dict]) -> list[str]:
    return [event["params"]["request"]["url"] for event in events if event.get("method") == "Network.requestWillBeSent"]

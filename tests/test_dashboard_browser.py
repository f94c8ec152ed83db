"""The HTML dashboard in a real headless Chromium: it renders, every chart image loads, and the
console stays free of errors. Chromium is driven through the DevTools protocol over
--remote-debugging-pipe (file descriptors 3 and 4, NUL-separated JSON), so no extra package is
needed. A page with a deleted chart proves the checks can fail.
"""
import base64
import fcntl
import json
import os
import select
import shutil
import struct
import subprocess
import time
from pathlib import Path

import pytest

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
if not os.path.exists(CHROMIUM):
    pytest.skip("headless Chromium not installed (/usr/bin/chromium; apt-get install chromium)",
                allow_module_level=True)
pytest.importorskip("asv")
pytest.importorskip("pandas")
pytest.importorskip("matplotlib")

from reports.dashboard import build_report  # noqa: E402
from helpers import asv_tiny_harness as harness  # noqa: E402

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--remote-debugging-pipe"]
PROBE = """JSON.stringify({
  title: document.title,
  sections: [...document.querySelectorAll('h2')].map(h => h.textContent),
  rows: document.querySelectorAll('tbody tr').length,
  images: [...document.images].map(i => ({src: i.getAttribute('src'), width: i.naturalWidth,
                                           complete: i.complete})),
  links: [...document.links].map(a => a.getAttribute('href')),
})"""


class Browser:
    """Headless Chromium with a DevTools pipe: call() a method, gather events meanwhile."""

    def __init__(self, profile):
        to_child, self._out = os.pipe()
        self._in, from_child = os.pipe()
        # Above fd 4, so that wiring one end to 3 cannot clobber the other before it is read.
        to_child, from_child = (self._high(fd) for fd in (to_child, from_child))

        # Chromium reads commands on fd 3 and writes replies on fd 4; bash wires them (dash
        # cannot name fds above 9).
        wire = f'exec "$0" "$@" 3<&{to_child} 4>&{from_child}'
        self.proc = subprocess.Popen(["bash", "-c", wire, CHROMIUM, *FLAGS,
                                      f"--user-data-dir={profile}"],
                                     pass_fds=(to_child, from_child), stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.close(to_child)
        os.close(from_child)
        self._buf, self._id, self.events = b"", 0, []

    @staticmethod
    def _high(fd):
        high = fcntl.fcntl(fd, fcntl.F_DUPFD, 10)
        os.close(fd)
        return high

    def _read(self, deadline):
        while b"\0" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._in], [], [], left)[0]:
                raise TimeoutError("Chromium did not answer in time")
            chunk = os.read(self._in, 1 << 16)
            if not chunk:
                raise RuntimeError(f"Chromium exited ({self.proc.poll()})")
            self._buf += chunk
        msg, self._buf = self._buf.split(b"\0", 1)
        return json.loads(msg)

    def call(self, method, params=None, session=None, timeout=30):
        self._id += 1
        msg = {"id": self._id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        os.write(self._out, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            reply = self._read(deadline)
            if reply.get("id") == self._id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply["result"]
            self.events.append(reply)

    def wait_for(self, event, timeout=30):
        deadline = time.monotonic() + timeout
        while not any(e.get("method") == event for e in self.events):
            self.events.append(self._read(deadline))

    def close(self):
        try:
            self.call("Browser.close", timeout=5)
        except (RuntimeError, TimeoutError, OSError):
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def load_page(path, tmp_path):
    """Open file `path`; returns (probe result, console/log errors, screenshot path)."""
    browser = Browser(tmp_path / "profile")
    try:
        target = browser.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = browser.call("Target.attachToTarget", {"targetId": target, "flatten": True})[
            "sessionId"]
        for domain in ("Page", "Runtime", "Log"):
            browser.call(f"{domain}.enable", session=session)
        browser.call("Page.navigate", {"url": path.resolve().as_uri()}, session=session)
        browser.wait_for("Page.loadEventFired")
        probe = browser.call("Runtime.evaluate", {"expression": PROBE, "returnByValue": True},
                             session=session)["result"]["value"]
        shot = browser.call("Page.captureScreenshot", {"format": "png"}, session=session)
        screenshot = tmp_path / "screenshot.png"
        screenshot.write_bytes(base64.b64decode(shot["data"]))
    finally:
        browser.close()
    errors = []
    for e in browser.events:
        p = e.get("params", {})
        if e.get("method") == "Runtime.exceptionThrown":
            errors.append(p["exceptionDetails"].get("text"))
        elif e.get("method") == "Runtime.consoleAPICalled" and p.get("type") == "error":
            errors.append(str(p.get("args")))
        elif e.get("method") == "Log.entryAdded" and p["entry"]["level"] == "error":
            errors.append(p["entry"]["text"] + " " + p["entry"].get("url", ""))
    return json.loads(probe), errors, screenshot


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    tiny = harness().runs()
    out = tmp_path_factory.mktemp("report")
    build_report([tiny["base"], tiny["gpu"]], out, asv=True,
                 asv_config=tiny["repo"] / "asv.conf.json")
    return out


def test_dashboard_renders_with_all_charts_and_no_errors(report, tmp_path):
    page, errors, screenshot = load_page(report / "index.html", tmp_path)
    assert page["title"] == "Taper benchmark report"
    assert page["sections"] == ["tiny-cpu", "tiny-gpu"]
    assert page["rows"] == 12  # 6 engine/torch pairs per machine
    assert len(page["images"]) == 6
    for img in page["images"]:
        assert img["complete"] and img["width"] > 0, f"chart {img['src']} did not load"
    assert "asv/index.html" in page["links"]
    assert errors == []
    width, height = struct.unpack(">II", screenshot.read_bytes()[16:24])
    assert width > 300 and height > 300


def test_a_missing_chart_is_detected(report, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(report, broken)
    (broken / "speedup_tiny-gpu.png").unlink()
    page, errors, _ = load_page(broken / "index.html", tmp_path)
    widths = {img["src"]: img["width"] for img in page["images"]}
    assert widths["speedup_tiny-gpu.png"] == 0
    assert all(w > 0 for src, w in widths.items() if src != "speedup_tiny-gpu.png")
    assert any("speedup_tiny-gpu.png" in e or "ERR_FILE_NOT_FOUND" in e for e in errors)

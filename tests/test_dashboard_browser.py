"""The HTML dashboard in a real headless Chromium at 1280 x 900 px: it renders, the summary's
headline row is on the first screen (checked in the DOM and in the screenshot's pixels), nothing
overflows horizontally, every chart image loads, and the console stays free of errors. Chromium is
driven through the DevTools protocol over --remote-debugging-pipe (file descriptors 3 and 4,
NUL-separated JSON), so no extra package is needed. A page with a deleted chart and a page made
too wide prove the checks can fail.
"""
import base64
import fcntl
import json
import os
import select
import shutil
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

ROOT = Path(__file__).resolve().parents[1]
from helpers import asv_tiny_harness as harness  # noqa: E402

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--remote-debugging-pipe"]
VIEW = {"width": 1280, "height": 900}
PROBE = """(() => {
  const row = document.querySelector('#summary table tbody tr');
  const box = row ? row.getBoundingClientRect() : null;
  const cell = row ? row.cells[row.cells.length - 1].getBoundingClientRect() : null;
  const hit = cell ? document.elementFromPoint(cell.x + 4, cell.y + cell.height / 2) : null;
  return JSON.stringify({
    title: document.title,
    sections: [...document.querySelectorAll('h2')].map(h => h.textContent),
    rows: document.querySelectorAll('tbody tr').length,
    images: [...document.images].map(i => ({src: i.getAttribute('src'), width: i.naturalWidth,
                                             complete: i.complete})),
    links: [...document.links].map(a => a.getAttribute('href')),
    scrollWidth: document.documentElement.scrollWidth, innerWidth: window.innerWidth,
    headline: row ? {text: row.innerText, top: box.top, bottom: box.bottom, left: box.left,
                     right: box.right, visible: !!hit && row.contains(hit)} : null,
  });
})()"""


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
        browser.call("Emulation.setDeviceMetricsOverride", dict(VIEW, deviceScaleFactor=1,
                                                                 mobile=False), session=session)
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


def headline_in_pixels(screenshot, box) -> int:
    """Dark (text) pixels of the screenshot inside the headline row's box."""
    from matplotlib.image import imread

    img = imread(screenshot)[..., :3]
    assert img.shape[1] == VIEW["width"]
    y0, y1 = int(box["top"]), int(min(box["bottom"], img.shape[0]))
    x0, x1 = int(box["left"]), int(box["right"])
    return int((img[y0:y1, x0:x1].mean(axis=2) < 0.4).sum())


def check_page(page, errors, screenshot):
    assert page["title"] == "Taper benchmark report"
    assert page["scrollWidth"] <= page["innerWidth"] == VIEW["width"], "horizontal overflow"
    head = page["headline"]
    assert head and head["visible"], "the summary's first row is hidden"
    assert 0 < head["top"] and head["bottom"] < VIEW["height"], "headline below the first screen"
    assert "tokens/s" in head["text"] and "x vs torch" in head["text"]
    assert headline_in_pixels(screenshot, head) > 200  # its text is really drawn there
    assert errors == []


def test_dashboard_renders_with_all_charts_and_no_errors(report, tmp_path):
    page, errors, screenshot = load_page(report / "index.html", tmp_path)
    check_page(page, errors, screenshot)
    assert page["sections"] == ["Summary", "tiny-cpu", "tiny-gpu"]
    assert len(page["images"]) == 6  # per machine: ratio bars of its one suite, tokens, memory
    for img in page["images"]:
        assert img["complete"] and img["width"] > 0, f"chart {img['src']} did not load"
    assert "asv/index.html" in page["links"]
    assert "asv/index.html#bench_tiny.Ops.time_matmul" in page["links"]


def test_the_committed_dashboard(tmp_path):
    page, errors, screenshot = load_page(ROOT / "measurements" / "report" / "index.html",
                                         tmp_path)
    check_page(page, errors, screenshot)
    assert {"cpu-2core", "h200"} <= set(page["sections"])
    assert all(img["complete"] and img["width"] > 0 for img in page["images"])


def test_a_missing_chart_and_an_overflow_are_detected(report, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(report, broken)
    (broken / "ratio_tiny-gpu_bench_tiny.png").unlink()
    page, errors, _ = load_page(broken / "index.html", tmp_path)
    widths = {img["src"]: img["width"] for img in page["images"]}
    assert widths["ratio_tiny-gpu_bench_tiny.png"] == 0
    assert all(w > 0 for src, w in widths.items() if src != "ratio_tiny-gpu_bench_tiny.png")
    assert any("ratio_tiny-gpu_bench_tiny.png" in e or "ERR_FILE_NOT_FOUND" in e for e in errors)
    wide = broken / "index.html"
    wide.write_text(wide.read_text().replace("</body>", '<div style="width:1500px">x</div></body>'))
    page, _, _ = load_page(wide, tmp_path)
    assert page["scrollWidth"] > VIEW["width"]

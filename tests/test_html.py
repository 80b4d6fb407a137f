"""`parsgd report --html` and an experiment's report.html, opened in a real headless Chromium.

The page is loaded through the DevTools protocol (Chromium's --remote-debugging-port on 127.0.0.1, the
`websockets` client): it must load with no console error, no exception and no request but the file
itself (data: images are not requests), a screenshot of the comparison table and of the first plot must
not be blank (pixel variance), and a wheel event over the timeline must zoom it (a narrower viewBox).
"""
from __future__ import annotations

import base64
import io
import itertools
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
START_TIMEOUT_S = 30   # Chromium writing DevToolsActivePort
LOAD_TIMEOUT_S = 30    # the page's load event
MIN_STD = 10.0         # a region's pixel standard deviation (0..255): below it, the region is blank


def parsgd(*args, cwd=None, check=True):
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.run([sys.executable, "-m", "parsgd", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=300)
    if check:
        assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


@pytest.fixture(scope="module")
def experiment_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("exp") / "results"
    parsgd("experiment", "--workers", "2", "--modes", "sequential,ps", "--transport", "shm", "--dataset",
           "synthetic", "--num-samples", "2048", "--epochs", "2", "-q", "--out", out)
    return out


class Browser:
    """One headless Chromium and one page, driven over the DevTools protocol (flattened sessions)."""

    def __init__(self, tmp: Path):
        from contextlib import ExitStack

        from websockets.sync.client import connect

        self.stack = ExitStack()
        self.profile = tmp / "profile"
        self.proc = subprocess.Popen([CHROMIUM, "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                                      "--no-first-run", "--disable-extensions", "--disable-background-networking",
                                      "--remote-debugging-address=127.0.0.1", "--remote-debugging-port=0",
                                      f"--user-data-dir={self.profile}", "--window-size=1400,1000", "about:blank"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        port_file, deadline = self.profile / "DevToolsActivePort", time.monotonic() + START_TIMEOUT_S
        while not (port_file.is_file() and len(port_file.read_text().split()) >= 2):
            assert self.proc.poll() is None and time.monotonic() < deadline, "chromium did not start"
            time.sleep(0.1)
        port, path = port_file.read_text().split()[:2]
        self.ws = self.stack.enter_context(connect(f"ws://127.0.0.1:{port}{path}", max_size=None,
                                                   open_timeout=START_TIMEOUT_S))
        self.ids, self.events, self.session = itertools.count(1), [], None
        target = self.call("Target.createTarget", url="about:blank")["targetId"]
        self.session = self.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        for domain in ("Page", "Runtime", "Network", "Log"):
            self.call(f"{domain}.enable")

    def call(self, method, timeout=LOAD_TIMEOUT_S, **params):
        ident = next(self.ids)
        msg = {"id": ident, "method": method, "params": params}
        if self.session:
            msg["sessionId"] = self.session
        self.ws.send(json.dumps(msg))
        deadline = time.monotonic() + timeout
        while True:
            reply = json.loads(self.ws.recv(timeout=max(0.1, deadline - time.monotonic())))
            if reply.get("id") == ident:
                assert "error" not in reply, reply
                return reply["result"]
            self.events.append(reply)

    def wait_event(self, method, timeout=LOAD_TIMEOUT_S):
        deadline = time.monotonic() + timeout
        while not any(e.get("method") == method for e in self.events):
            self.events.append(json.loads(self.ws.recv(timeout=max(0.1, deadline - time.monotonic()))))

    def evaluate(self, expression):
        return self.call("Runtime.evaluate", expression=expression, returnByValue=True)["result"].get("value")

    def close(self):
        self.stack.close()
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def browser(tmp_path):
    if CHROMIUM is None:
        pytest.fail("chromium is not installed: apt-get install chromium (.ci/run does)")
    b = Browser(tmp_path)
    yield b
    b.close()


def region_std(png: bytes) -> float:
    from PIL import Image

    return float(np.asarray(Image.open(io.BytesIO(png)).convert("L"), dtype=np.float64).std())


def screenshot_of(browser: Browser, selector: str) -> bytes:
    rect = browser.evaluate(f"(() => {{ const r = document.querySelector({json.dumps(selector)})"
                            ".getBoundingClientRect(); return [r.x + scrollX, r.y + scrollY, r.width, r.height]; })()")
    assert rect and rect[2] > 50 and rect[3] > 20, (selector, rect)
    shot = browser.call("Page.captureScreenshot", format="png", captureBeyondViewport=True,
                        clip={"x": rect[0], "y": rect[1], "width": rect[2], "height": rect[3], "scale": 1})
    return base64.b64decode(shot["data"])


def static_refs(text: str) -> list[str]:
    """Anything in the page that could make a browser fetch: a URL scheme, src/href not data: or #, url(), @import."""
    found = re.findall(r"https?://|//[a-z0-9.-]+\.[a-z]{2,}/|@import|url\(", text, flags=re.I)
    found += [m for m in re.findall(r'(?:src|href)\s*=\s*"([^"]*)"', text) if not m.startswith(("data:", "#"))]
    return found


@pytest.mark.slow
def test_experiment_writes_a_self_contained_report_that_chromium_shows(experiment_dir, browser, tmp_path):
    page = experiment_dir / "report.html"
    assert page.is_file(), "parsgd experiment writes report.html by default"
    doc = json.loads((experiment_dir / "experiment.json").read_text())
    assert "report.html" in doc["experiment"]["files"], "a rerun must know the file to clean it up"
    text = page.read_text(encoding="utf-8")
    assert static_refs(text) == []
    for section in ("Comparison", "Plots", "Per-step timeline", "Bytes per server and per link",
                    "Config of every run"):
        assert f"<h2>{section}</h2>" in text

    # Reopened from a copy in a folder of its own: nothing beside the file is needed.
    alone = tmp_path / "alone" / "report.html"
    alone.parent.mkdir()
    shutil.copy(page, alone)
    browser.call("Runtime.evaluate", expression="1")
    browser.events.clear()  # about:blank's own load event must not count as the page's
    browser.call("Page.navigate", url=alone.as_uri())
    browser.wait_event("Page.loadEventFired")
    time.sleep(0.3)  # late console messages
    browser.call("Runtime.evaluate", expression="1")  # drain queued events
    errors = [e for e in browser.events if e.get("method") == "Runtime.exceptionThrown"
              or (e.get("method") == "Runtime.consoleAPICalled" and e["params"]["type"] in ("error", "assert"))
              or (e.get("method") == "Log.entryAdded" and e["params"]["entry"]["level"] == "error")]
    assert errors == []
    requests = [e["params"]["request"]["url"] for e in browser.events if e.get("method") == "Network.requestWillBeSent"]
    assert [u for u in requests if u != alone.as_uri() and not u.startswith("data:")] == []

    rows = browser.evaluate("document.querySelectorAll('#comparison tbody tr').length")
    assert rows == 2  # sequential and ps P=2 shm
    assert browser.evaluate("Array.from(document.images).every(i => i.complete && i.naturalWidth > 100)")
    assert region_std(screenshot_of(browser, "#comparison")) > MIN_STD
    assert region_std(screenshot_of(browser, "img.plot")) > MIN_STD

    # The timeline zooms with the mouse wheel, around the pointer.
    before = browser.evaluate("document.querySelector('svg.tl').getAttribute('viewBox')").split()
    browser.evaluate("document.querySelector('svg.tl').scrollIntoView()")
    r = browser.evaluate("(() => { const r = document.querySelector('svg.tl').getBoundingClientRect(); "
                         "return [r.x + r.width / 2, r.y + r.height / 2]; })()")
    browser.call("Input.dispatchMouseEvent", type="mouseWheel", x=r[0], y=r[1], deltaX=0, deltaY=-120)
    after = browser.evaluate("document.querySelector('svg.tl').getAttribute('viewBox')").split()
    assert float(after[2]) < float(before[2]) * 0.9, (before, after)
    browser.evaluate("document.querySelector('svg.tl').dispatchEvent(new MouseEvent('dblclick'))")
    assert browser.evaluate("document.querySelector('svg.tl').getAttribute('viewBox')").split() == before


@pytest.mark.slow
def test_report_html_of_run_directories(experiment_dir, tmp_path):
    out = tmp_path / "two.html"
    proc = parsgd("report", experiment_dir / "sequential", experiment_dir / "ps-p2-shm", "--html", out)
    assert proc.stdout.strip() == str(out)
    text = out.read_text(encoding="utf-8")
    assert static_refs(text) == [] and text.count('<img class="plot"') >= 3
    assert text.count("<details>") == 2  # the config of each run
    assert '<svg class="tl"' in text  # the PS run's timeline
    plain = parsgd("report", experiment_dir).stdout
    assert plain.splitlines()[0].split()[:2] == ["run", "P"]
    mixed = parsgd("report", experiment_dir, experiment_dir / "sequential", "--html", tmp_path / "m.html", check=False)
    assert mixed.returncode == 2 and "experiment folder" in mixed.stderr and not (tmp_path / "m.html").exists()


def test_report_refuses_a_folder_that_is_not_a_run(tmp_path):
    proc = parsgd("report", tmp_path, "--html", tmp_path / "x.html", check=False)
    assert proc.returncode == 1 and proc.stderr.startswith("error: ") and len(proc.stderr.splitlines()) == 1
    assert not (tmp_path / "x.html").exists()


@pytest.mark.slow
def test_experiment_refuses_a_report_html_it_did_not_write(tmp_path):
    out = tmp_path / "results"
    out.mkdir()
    (out / "report.html").write_text("<p>mine</p>")
    args = ["experiment", "--workers", "2", "--modes", "sequential", "--dataset", "synthetic", "--num-samples",
            "512", "--epochs", "1", "-q", "--out", out]
    proc = parsgd(*args, check=False)
    assert proc.returncode == 1 and "report.html" in proc.stderr and len(proc.stderr.splitlines()) == 1
    assert (out / "report.html").read_text() == "<p>mine</p>"
    parsgd(*args, "--force")
    assert "parsgd report" in (out / "report.html").read_text()

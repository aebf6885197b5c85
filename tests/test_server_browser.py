"""``sglrp serve`` in a real browser: Debian's Chromium driven by Playwright.

The server runs as ``python -m sglrp.cli serve`` on 127.0.0.1 on a free port; the page is
used as a person would: upload, choose target and methods, explain, download. Needs the
``app`` extra, Playwright (``make app``) and ``/usr/bin/chromium`` (``apt-get install
chromium``); without them the tests are skipped with the reason, unless
``SGLRP_REQUIRE_BROWSER=1`` (set by CI), which makes a missing piece an error.
Screenshots go to ``$SGLRP_SCREENSHOTS`` (default: the test's temporary folder).
"""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

CHROMIUM = os.environ.get("SGLRP_CHROMIUM", "/usr/bin/chromium")
_TIMEOUT_MS = 120_000  # generous: the machine is shared; no test asserts a duration


def _missing() -> str | None:
    if importlib.util.find_spec("gradio") is None:
        return 'gradio is not installed (make app, or pip install "sglrp[app]")'
    if importlib.util.find_spec("playwright") is None:
        return "playwright is not installed (make app)"
    if not Path(CHROMIUM).is_file():
        return f"no Chromium at {CHROMIUM} (apt-get install chromium, or set SGLRP_CHROMIUM)"
    return None


_REASON = _missing()
if _REASON and os.environ.get("SGLRP_REQUIRE_BROWSER") == "1":
    raise RuntimeError(f"SGLRP_REQUIRE_BROWSER=1 but {_REASON}")
pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(_REASON is not None, reason=f"browser test: {_REASON}"),
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for(url: str, proc: subprocess.Popen, seconds: float = 180.0) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"sglrp serve exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise RuntimeError(f"sglrp serve did not answer at {url} within {seconds:.0f} s")


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    from sglrp.data import generate

    root = tmp_path_factory.mktemp("browser")
    out = {}
    for name, start in (("two_shapes", 1), ("other_shapes", 4)):
        out[name] = root / f"{name}.png"
        Image.fromarray(generate("multi", 1, seed=0, size=64, start=start)[0].image).save(out[name])
    out["corrupt"] = root / "corrupt.png"
    out["corrupt"].write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(200)))
    out["folder"] = root / "folder"
    out["folder"].mkdir()
    Image.fromarray(generate("single", 1, seed=0, size=64)[0].image).save(
        out["folder"] / "from_folder.png"
    )
    return out


@pytest.fixture(scope="module")
def server(files) -> Iterator[str]:
    port = _free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "2", "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "sglrp.cli", "serve", "--host", "127.0.0.1", "--port", str(port)]
    cmd += ["--folder", str(files["folder"])]
    log = files["folder"].parent / "server.log"
    with open(log, "w") as handle:
        proc = subprocess.Popen(cmd, stdout=handle, stderr=subprocess.STDOUT, env=env)
        url = f"http://127.0.0.1:{port}/"
        try:
            _wait_for(url, proc)
            yield url
        except RuntimeError as err:
            raise RuntimeError(f"{err}; server log:\n{log.read_text()}") from err
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = p.chromium.launch(
            executable_path=CHROMIUM,
            headless=True,
            args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"],
        )
        yield chromium
        chromium.close()


@pytest.fixture
def shots(tmp_path) -> Path:
    folder = Path(os.environ.get("SGLRP_SCREENSHOTS", tmp_path))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


class Tab:
    """One browser tab on the page, with the page's controls by their elem_id."""

    def __init__(self, context, url: str) -> None:
        from playwright.sync_api import expect

        self.expect = expect
        self.page = context.new_page()
        self.page.set_default_timeout(_TIMEOUT_MS)
        self.external: list[str] = []
        self.page.on("request", self._note)
        self.page.goto(url)
        self.expect(self.page.locator("#status")).to_contain_text("Start with an image")

    def _note(self, request) -> None:
        host = request.url.split("/")[2] if "://" in request.url else ""
        if request.url.startswith(("http", "ws")) and not host.startswith("127.0.0.1"):
            self.external.append(request.url)

    def status(self, text: str) -> None:
        self.expect(self.page.locator("#status")).to_contain_text(text, timeout=_TIMEOUT_MS)

    def upload(self, path: Path) -> None:
        self.page.locator("#upload input[type=file]").set_input_files(str(path))

    def methods(self, *labels: str) -> None:
        group = self.page.locator("#methods")
        for box in group.get_by_role("checkbox").all():
            box.uncheck()
        for label in labels:
            group.get_by_label(label, exact=True).check()

    def explain(self) -> None:
        self.page.locator("#explain").click()
        self.status("contrast view against")

    def download(self, name: str, folder: Path) -> Path:
        # Gradio's file list: a row per file, its name in td.filename, the link in td.download
        row = self.page.locator("#downloads tr.file").filter(
            has=self.page.locator(f'td.filename[aria-label="{name}"]')
        )
        link = row.locator("td.download a")
        with self.page.expect_download() as info:
            link.click()
        path = folder / f"{id(self)}-{name}"
        info.value.save_as(path)
        return path


def _reference(path: Path, target: int, method: str) -> np.ndarray:
    import sglrp
    from sglrp.images import load_image, preprocess
    from sglrp.models import pretrained

    shapes = pretrained("shapes_vgg")
    x, _ = preprocess(load_image(path), 64, 64, shapes.mean, shapes.std)
    options = {}
    if sglrp.methods.get(method).takes_rules:
        options = {
            "rules": "dtd",
            "bounds": sglrp.bounds_from_normalization(shapes.mean, shapes.std),
        }
    r = sglrp.explain(shapes.model, x, target, method, **options)
    return r[0].numpy()


def _probabilities(path: Path) -> list[int]:
    from sglrp.images import load_image, preprocess
    from sglrp.models import pretrained

    shapes = pretrained("shapes_vgg")
    x, _ = preprocess(load_image(path), 64, 64, shapes.mean, shapes.std)
    with torch.no_grad():
        return torch.argsort(shapes.model(x)[0], descending=True).tolist()


def test_upload_explain_download_equals_the_library(server, browser, files, shots, tmp_path):
    context = browser.new_context(viewport={"width": 1500, "height": 1000}, accept_downloads=True)
    tab = Tab(context, server)
    tab.upload(files["two_shapes"])
    tab.status("predicted")
    order = _probabilities(files["two_shapes"])
    tab.page.locator("#top5 label").nth(1).click()  # the second most probable class
    tab.methods("SGLRP", "Guided Grad-CAM")
    tab.explain()
    tab.page.locator("#contrast-view img").wait_for()
    tab.page.screenshot(path=str(shots / "serve.png"), full_page=True)

    summary = json.loads(tab.download("explanation.json", tmp_path).read_text())
    assert summary["target"]["index"] == order[1]
    assert [m["name"] for m in summary["methods"]] == ["sglrp", "guided_gradcam"]
    for method in ("sglrp", "guided_gradcam"):
        got = np.load(tab.download(f"{method}.npy", tmp_path))
        want = _reference(files["two_shapes"], order[1], method)
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, atol=1e-6, rtol=0)
    tab.page.get_by_text("Neurons: critical-path graph").click()
    tab.page.locator("#paths").click()
    tab.expect(tab.page.locator("#neurons")).to_contain_text("Top neurons", timeout=_TIMEOUT_MS)
    tab.page.locator("#graph img").wait_for()
    tab.page.screenshot(path=str(shots / "serve_paths.png"), full_page=True)
    assert tab.external == [], "the page must work offline"
    context.close()


def test_corrupt_upload_is_reported_and_the_server_keeps_serving(server, browser, files, shots):
    context = browser.new_context(viewport={"width": 1500, "height": 1000})
    tab = Tab(context, server)
    tab.upload(files["corrupt"])
    tab.status("Cannot use this file")
    tab.status("corrupt.png")
    tab.page.screenshot(path=str(shots / "serve_corrupt.png"))
    tab.upload(files["two_shapes"])
    tab.status("predicted")
    tab.page.locator("#example input").click()
    tab.page.get_by_role("option", name="objects #1:").click()
    tab.status("builtin-multi-1.png")
    tab.page.locator("#input-picture img").wait_for()
    context.close()


def test_two_tabs_do_not_mix(server, browser, files, tmp_path, shots):
    context = browser.new_context(viewport={"width": 1500, "height": 1000}, accept_downloads=True)
    a, b = Tab(context, server), Tab(context, server)
    a.upload(files["two_shapes"])
    a.status("two_shapes.png")
    b.page.locator("#folder input").click()
    b.page.get_by_role("option", name="from_folder.png").click()
    b.status("from_folder.png")
    a.methods("LRP")
    b.methods("SGLRP")
    b.explain()
    a.explain()
    b.page.screenshot(path=str(shots / "serve_tab_b.png"), full_page=True)
    a.status("two_shapes.png")
    b.status("from_folder.png")
    sa = json.loads(a.download("explanation.json", tmp_path).read_text())
    sb = json.loads(b.download("explanation.json", tmp_path).read_text())
    assert Path(sa["image"]).name == "two_shapes.png"
    assert Path(sb["image"]).name == "from_folder.png"
    assert [m["name"] for m in sa["methods"]] == ["lrp"]
    assert [m["name"] for m in sb["methods"]] == ["sglrp"]
    context.close()

"""Browser tests: Debian's Chromium (installed by .ci/run) driven by Playwright, against a
real `lmtune serve` on loopback.

Every page a test opens records each request the browser makes; a request to any host but
the server fails the test (the page must work offline and leak nothing). Screenshots go to
$LMTUNE_SCREENSHOTS (default: screenshots/ at the repository root), and .ci/run lists them
in CI's log.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path
from urllib.parse import urlsplit

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "serving"))

CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run",
                  "--disable-quic"]
SHOTS = Path(os.environ.get("LMTUNE_SCREENSHOTS") or
             Path(__file__).resolve().parents[2] / "screenshots")


def chromium_path() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    raise RuntimeError("the browser tests need Chromium: apt-get install chromium (.ci/run "
                       "installs it)")


@pytest.fixture(scope="session")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_FLAGS)
        yield b
        b.close()


class Page:
    """A browser tab on the server at `url`, with the requests it made and a screenshot
    helper."""

    def __init__(self, browser, url: str, width: int = 1280, height: int = 800):
        self.url = url.rstrip("/")
        self.context = browser.new_context(viewport={"width": width, "height": height})
        self.page = self.context.new_page()
        self.requests: list[str] = []
        self.errors: list[str] = []
        self.dialogs: list[str] = []
        self.page.on("request", lambda r: self.requests.append(r.url))
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        # A 4xx answer the page shows as a message is logged by Chromium as a failed load;
        # scripts' own errors are what count.
        self.page.on("console", lambda m: self.errors.append(m.text) if m.type == "error"
                     and not m.text.startswith("Failed to load resource") else None)

        def dialog(d):
            self.dialogs.append(d.message)
            d.dismiss()
        self.page.on("dialog", dialog)

    def open(self, route: str = "#/"):
        self.page.goto(f"{self.url}/{route}")
        return self.page

    def shot(self, name: str) -> Path:
        SHOTS.mkdir(parents=True, exist_ok=True)
        path = SHOTS / f"{name}.png"
        self.page.screenshot(path=str(path), full_page=True)
        print(f"screenshot: {path}")
        return path

    def foreign_requests(self) -> list[str]:
        origin = urlsplit(self.url).netloc
        return [u for u in self.requests
                if not u.startswith(("data:", "blob:")) and urlsplit(u).netloc != origin]

    def close(self):
        self.context.close()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    if report.when == "call":
        item.stash[FAILED] = report.failed
    return report


FAILED = pytest.StashKey[bool]()


@pytest.fixture
def open_page(browser, request):
    pages = []

    def make(url: str, **size) -> Page:
        page = Page(browser, url, **size)
        pages.append(page)
        return page
    yield make
    for i, page in enumerate(pages):
        if request.node.stash.get(FAILED, False):  # what the page showed when it failed
            page.shot(f"failed-{request.node.name}-{i}")
        try:
            assert page.foreign_requests() == [], "the page asked another host"
            assert page.errors == [], f"errors in the page: {page.errors}"
        finally:
            page.close()


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("LMTUNE_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


@pytest.fixture
def quotes_csv(tmp_path) -> Path:
    """Real text as a CSV of quotes: the jokes pyjokes ships, one per row, with an author
    column that the template leaves out."""
    import csv

    import pyjokes

    path = tmp_path / "quotes.csv"
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["quote", "author"])
        for joke in pyjokes.get_jokes(language="en", category="neutral")[:40]:
            writer.writerow([joke, "pyjokes"])
    return path

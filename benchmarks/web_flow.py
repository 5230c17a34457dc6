"""The web page's whole loop as a new user clicks it, timed: upload a CSV of quotes, see it
as training will, estimate, train the served model, watch, did-it-learn, download the GGUF
and the Ollama Modelfile, then ask base and tuned side by side.

Needs a running `lmtune serve` (any models; the first served one is trained) and Chromium:

    lmtune serve &                      # the default model
    python benchmarks/web_flow.py --url http://127.0.0.1:8000 --out /tmp/web-flow

Prints each stage's time since the start; writes a screenshot per stage into --out.
"""

from __future__ import annotations

import argparse
import csv
import shutil
import time
from pathlib import Path

STAGE_TIMEOUT_MS = 1_800_000
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run"]


def quotes_csv(path: Path) -> Path:
    """pyjokes' jokes as a CSV of quotes (real text that a package ships)."""
    import pyjokes

    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["quote", "author"])
        for joke in pyjokes.get_jokes(language="en", category="all"):
            writer.writerow([joke, "pyjokes"])
    return path


def main() -> None:
    from playwright.sync_api import sync_playwright

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--out", default="web-flow")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    data = quotes_csv(out / "quotes.csv")
    start = time.monotonic()

    def stage(page, name: str, note: str = "") -> None:
        page.screenshot(path=str(out / f"{name}.png"), full_page=True)
        print(f"{time.monotonic() - start:7.1f} s  {name}  {note}".rstrip(), flush=True)

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=shutil.which("chromium"),
                                    args=CHROMIUM_FLAGS)
        page = browser.new_context(viewport={"width": 1280, "height": 800}).new_page()
        page.set_default_timeout(STAGE_TIMEOUT_MS)
        page.goto(args.url + "/#/data")
        page.set_input_files("input[type=file]", str(data))
        page.get_by_role("button", name="Upload").click()
        page.wait_for_url("**#/data?file=*")
        page.get_by_label("Template", exact=True).fill("Quote: {quote}")
        page.get_by_role("button", name="Show as training sees it").click()
        page.wait_for_selector(".examples .tok.k-target")
        stage(page, "1-preview")
        page.get_by_role("link", name="Train on this file").click()
        page.get_by_role("button", name="Estimate time on this machine").click()
        page.wait_for_selector("form .estimate, form .error")
        stage(page, "2-estimate", page.inner_text("form .estimate, form .error"))
        page.get_by_role("button", name="Start training").click()
        page.wait_for_url("**#/run/ftjob-*")
        page.wait_for_function("() => Number(document.querySelector('.chart').dataset.points"
                               " || 0) >= 2")
        stage(page, "3-first-points")
        page.wait_for_selector(".badge.status-succeeded, .badge.status-failed")
        stage(page, "4-finished", page.inner_text(".run-head").replace("\n", " "))
        page.get_by_role("button", name="Measure").click()
        page.wait_for_selector(".verdict, .card .error")
        stage(page, "5-did-it-learn", page.inner_text(".verdict, .card .error"))
        with page.expect_download() as got:
            page.get_by_role("button", name="Download GGUF").click()
        got.value.save_as(out / got.value.suggested_filename)
        with page.expect_download() as got:
            page.get_by_role("button", name="Download Modelfile for Ollama").click()
        got.value.save_as(out / "Modelfile")
        stage(page, "6-downloads", got.value.suggested_filename)
        page.get_by_role("link", name="Try it next to the base").click()
        page.get_by_label("Prompt", exact=True).fill("Quote:")
        page.get_by_role("button", name="Generate with both").click()
        page.wait_for_function("() => [...document.querySelectorAll('.pane-out .small')]"
                               ".filter(e => e.textContent.includes('pieces')).length === 2")
        answers = " | ".join(o.inner_text().replace("\n", " ")
                             for o in page.query_selector_all(".pane-out"))
        stage(page, "7-playground", answers)
        browser.close()


if __name__ == "__main__":
    main()

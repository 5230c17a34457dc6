"""The web page as a user drives it: upload data and see it as training will, start a job,
watch it learn (through a reload), then chat with the result beside its base; and the
page at phone size."""

from __future__ import annotations

from serve_helpers import running_server

TIMEOUT_MS = 240_000


POINTS = "Number(document.querySelector('.chart').dataset.points || 0)"


def points_at_least(n: int) -> str:
    # A function, not an expression: a string expression is evaluated with eval(), which
    # the page's Content-Security-Policy forbids.
    return f"() => {POINTS} >= {n}"


def got_name(page) -> str:
    """The GGUF file name the page says to put beside the Modelfile."""
    return page.inner_text("pre").split("holding ")[1].split(" and")[0]


def test_upload_preview_train_reload_and_chat(tiny_gpt2, home, quotes_csv, open_page):
    with running_server([tiny_gpt2], workers=1) as (url, _):
        p = open_page(url)
        page = p.open("#/data")
        page.set_input_files("input[type=file]", str(quotes_csv))
        page.get_by_role("button", name="Upload").click()
        page.wait_for_url("**#/data?file=*")
        # Two columns and no template: the page shows lmtune's one-line error, not a crash.
        page.get_by_label("Template", exact=True).fill("Quote: {quote}")
        page.get_by_label("Prompt template").fill("")
        page.get_by_role("button", name="Show as training sees it").click()
        page.wait_for_selector(".examples .tok.k-target")
        kinds = page.eval_on_selector_all(".examples li:first-child .tok",
                                          "els => els.map(e => e.className)")
        assert any("k-end" in k for k in kinds) and any("k-target" in k for k in kinds)
        assert "Quote:" in page.inner_text(".examples li:first-child")
        assert page.locator("dt", has_text="Tokens per character").is_visible()
        p.shot("1-data-preview")

        page.get_by_role("link", name="Train on this file").click()
        page.wait_for_url("**#/new?*")
        assert page.get_by_label("Template", exact=True).input_value() == "Quote: {quote}"
        page.get_by_label("Epochs").fill("40")
        page.get_by_label("Learning rate").fill("0.01")
        page.get_by_label("Validation split").fill("0.1")
        page.get_by_role("button", name="Estimate time on this machine").click()
        page.wait_for_selector(".estimate", timeout=120_000)  # a dry run of real steps
        assert "per epoch" in page.inner_text(".estimate")
        p.shot("2-new-job")
        page.get_by_role("button", name="Start training").click()
        page.wait_for_url("**#/run/ftjob-*")

        # The chart gains points while the job runs; a reload keeps them and the samples.
        page.wait_for_function(f"() => {POINTS} >= 2 || !!document.querySelector("
                               f"'.badge.status-failed')", timeout=TIMEOUT_MS)
        assert page.locator(".badge.status-failed").count() == 0, page.inner_text(".run-head")
        p.shot("3-job-running")
        before = page.evaluate(f"() => {POINTS}")
        samples = page.locator(".samples li").count()
        page.reload()
        page.wait_for_function(points_at_least(before), timeout=30_000)
        page.wait_for_function(f"() => document.querySelectorAll('.samples li').length >= "
                               f"{samples}", timeout=30_000)
        page.wait_for_selector(".badge.status-succeeded", timeout=TIMEOUT_MS)
        assert page.locator(".samples li").count() >= 1

        # Did it learn: base against tuned on the held-out quotes and on general text.
        page.get_by_role("button", name="Measure").click()
        page.wait_for_selector("text=General text", timeout=120_000)
        assert page.locator(".heat td[data-level]").count() > 0
        with page.expect_download(timeout=120_000) as got:
            page.get_by_role("button", name="Download GGUF").click()
        gguf = got.value.path()
        assert open(gguf, "rb").read(4) == b"GGUF"
        with page.expect_download() as got:
            page.get_by_role("button", name="Download Modelfile for Ollama").click()
        modelfile = open(got.value.path(), encoding="utf-8").read()
        assert f"FROM ./{got_name(page)}" in modelfile and "TEMPLATE" in modelfile
        p.shot("4-job-done")

        page.get_by_role("link", name="Try it next to the base").click()
        page.wait_for_url("**#/play?*")
        page.get_by_label("Mode", exact=True).select_option("prompt")
        page.get_by_label("Prompt", exact=True).fill("Quote:")
        page.get_by_role("button", name="Generate with both").click()
        page.wait_for_function("() => [...document.querySelectorAll('.pane-out .output')]"
                               ".filter(e => e.textContent.length > 0).length === 2",
                               timeout=60_000)
        page.wait_for_function("() => [...document.querySelectorAll('.pane-out .small')]"
                               ".filter(e => e.textContent.includes('pieces')).length === 2")
        p.shot("5-playground")

"""The web page at phone and desktop size, by keyboard alone, and without colour: no view
scrolls sideways, Tab reaches every link and control in order with a visible focus and a
name, and each token kind of the data preview is told apart by words and shape."""

from __future__ import annotations

import json

import httpx
import pytest
from serve_helpers import running_server

RUN = "lines-lora"
PREF_RUN = "prefs-dpo"
SIZES = {"phone": (390, 844), "desktop": (1280, 800)}
KINDS = ("start", "prompt", "turn", "target", "end", "pad")

# The page's width against the window's, with the elements sticking out past its right
# edge (for a failure message that says which), and the cards whose content spills past
# their border (a word too long for a narrow column), which stays inside a wide window.
OVERFLOW = """() => {
  const width = window.innerWidth;
  const html = (e) => e.outerHTML.slice(0, 120);
  return {scroll: document.scrollingElement.scrollWidth, width,
          wide: [...document.querySelectorAll('body *')]
            .filter((e) => e.getBoundingClientRect().right > width + 1).slice(0, 5).map(html),
          spilling: [...document.querySelectorAll('.card')]
            .filter((c) => c.scrollWidth > c.clientWidth + 1).map(html)};
}"""


@pytest.fixture(scope="module")
def served(tiny_gpt2, session_lines, tmp_path_factory):
    """A server with a finished command-line run in its runs folder and one uploaded
    prompt/completion file: (url, file id)."""
    import lmtune

    tmp = tmp_path_factory.mktemp("layout")
    runs = tmp / "runs"
    lmtune.train(str(session_lines), model=str(tiny_gpt2), out=str(runs / RUN),
                 method="lora", max_steps=6, lr=2e-2, log_every=2, eval_every=3,
                 sample_every=3, sample_max_new_tokens=8, split_on="\n", block_size=64,
                 precision="fp32", device="cpu", seed=0)
    rows = [{"prompt": f"Where did the {a} sit?\n", "completion": f"The {a} sat on the {b}."}
            for a in ("cat", "dog", "bird") for b in ("mat", "park")]
    prefs = tmp / "prefs.jsonl"
    prefs.write_text("".join(json.dumps({"prompt": r["prompt"], "chosen": " " + r["completion"],
                                         "rejected": " I would rather not say."}) + "\n"
                             for r in rows * 4))
    lmtune.train(str(prefs), model=str(tiny_gpt2), out=str(runs / PREF_RUN), task="preference",
                 method="lora", max_steps=12, lr=2e-2, log_every=4, eval_every=6,
                 sample_every=12, sample_max_new_tokens=6, val_split=0.25, precision="fp32",
                 device="cpu", seed=0)
    data = "".join(json.dumps(r) + "\n" for r in rows)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LMTUNE_HOME", str(tmp / "home"))
        with running_server([tiny_gpt2], runs=str(runs)) as (url, _):
            r = httpx.post(f"{url}/v1/files", data={"purpose": "fine-tune"},
                           files={"file": ("questions.jsonl", data)})
            assert r.status_code == 200, r.text
            pairs = "".join(json.dumps({"prompt": row["prompt"], "chosen": row["completion"],
                                        "rejected": "I would rather not say."}) + "\n"
                            for row in rows * 2)
            p = httpx.post(f"{url}/v1/files", data={"purpose": "fine-tune"},
                           files={"file": ("prefs.jsonl", pairs)})
            assert p.status_code == 200, p.text
            yield url, r.json()["id"], p.json()["id"]


def views(file_id: str, pairs_id: str) -> dict[str, tuple[str, str]]:
    """Each view: its address and a selector that is there once it has drawn."""
    return {"runs": ("#/", "table.runs tbody tr"),
            "data": (f"#/data?file={file_id}", ".examples .tok"),
            "data-pairs": (f"#/data?file={pairs_id}", ".pair .pair-row .tok"),
            "run": (f"#/run/run:{RUN}", ".chart[data-points] .uplot"),
            "new-job": ("#/new", "form.options button[type=submit]"),
            "playground": ("#/play", "form.play button.primary")}


@pytest.mark.parametrize("size", SIZES)
def test_no_view_scrolls_sideways(served, open_page, size):
    url, file_id, pairs_id = served
    width, height = SIZES[size]
    p = open_page(url, width=width, height=height)
    for name, (route, ready) in views(file_id, pairs_id).items():
        page = p.open(route)
        page.wait_for_selector(ready)
        if name == "run":
            page.wait_for_selector(".samples li")
        assert page.locator("main .error").count() == 0, page.inner_text("main")
        p.shot(f"{size}-{name}")
        seen = page.evaluate(OVERFLOW)
        assert seen["scroll"] <= seen["width"] + 1, (name, seen)
        assert seen["spilling"] == [], (name, seen)


def focused(page) -> str:
    return page.evaluate("() => document.activeElement.textContent.trim()")


def test_keyboard_reaches_nav_skip_link_and_every_new_job_control(served, open_page):
    url, _, _ = served
    p = open_page(url)
    page = p.open("#/")
    page.wait_for_selector("table.runs tbody tr")
    order = []
    for _ in range(6):
        page.keyboard.press("Tab")
        order.append(focused(page))
        if len(order) == 1:  # hidden off-screen until focused, then on screen
            box = page.locator(".skip").bounding_box()
            assert box["x"] >= 0 and box["y"] >= 0
    assert order == ["Skip to content", "lmtune", "Runs", "Data", "New job", "Playground"]

    page.keyboard.press("Shift+Tab")
    page.keyboard.press("Shift+Tab")
    assert focused(page) == "Data"
    page.keyboard.press("Enter")
    page.wait_for_selector("form.upload")
    assert page.evaluate("() => location.hash") == "#/data"
    link = page.locator("nav a", has_text="Data")
    assert link.get_attribute("aria-current") == "page"
    assert page.evaluate("() => document.activeElement.matches(':focus-visible')")
    style = link.evaluate("e => getComputedStyle(e).outlineStyle + ' ' + "
                          "getComputedStyle(e).outlineWidth")
    assert style.split()[0] != "none" and float(style.split()[1].removesuffix("px")) >= 2

    # The skip link moves focus to the content and leaves the page where it was.
    page = open_page(url).open("#/data")
    page.wait_for_selector("form.upload")
    page.keyboard.press("Tab")
    assert focused(page) == "Skip to content"
    page.keyboard.press("Enter")
    assert page.evaluate("() => document.activeElement.id") == "main"
    assert page.evaluate("() => location.hash") == "#/data"
    assert page.locator("main h1").inner_text() == "Data"

    # Every control of the New job form: reached by Tab, and found by its name.
    page = p.open("#/new")
    page.wait_for_selector("form.options button[type=submit]")
    controls = page.eval_on_selector_all(
        "form.options :is(input, select, textarea, button)",
        """els => els.map((e, i) => {
             e.dataset.k = String(i);
             return {k: String(i), button: e.tagName === 'BUTTON',
                     name: e.tagName === 'BUTTON' ? e.textContent.trim()
                         : [...e.labels].map((l) => l.textContent.trim()).join(' ')};
           })""")
    assert len(controls) >= 15
    for c in controls:
        assert c["name"], f"control {c['k']} has no label"
        found = (page.get_by_role("button", name=c["name"], exact=True) if c["button"]
                 else page.get_by_label(c["name"], exact=True))
        assert found.get_attribute("data-k") == c["k"], c

    page.locator("nav a", has_text="Playground").focus()
    reached = []
    for _ in range(len(controls) + 10):  # the controls and the form's one link
        page.keyboard.press("Tab")
        k = page.evaluate("() => document.activeElement.dataset.k ?? null")
        if k is not None:
            reached.append(k)
        if k == controls[-1]["k"]:
            break
    assert reached == [c["k"] for c in controls]


def test_token_kinds_read_without_colour(served, open_page):
    url, file_id, _ = served
    p = open_page(url)
    page = p.open(f"#/data?file={file_id}")
    page.wait_for_selector(".examples .tok")

    legend = {}
    for item in page.locator(".legend li").all():
        kind = item.locator(".tok").inner_text()
        words = item.inner_text().removeprefix(kind).strip()
        legend[kind] = words
        assert len(words.split()) >= 2, (kind, words)  # a phrase, not a colour key
    assert sorted(legend) == sorted(KINDS)
    assert len(set(legend.values())) == len(KINDS)

    tokens = page.eval_on_selector_all(".examples .tok", "els => els.map(e => "
                                       "({cls: e.className, title: e.title}))")
    seen = set()
    for t in tokens:
        kind = t["cls"].split("k-")[1].split()[0]
        seen.add(kind)
        assert t["title"].split(" · ")[0] == legend[kind], t
    assert {"prompt", "target", "end"} <= seen

    # Each kind's swatch differs from every other in a shape: weight, slant, or border.
    shapes = page.eval_on_selector_all(".legend .tok", """els => els.map(e => {
        const s = getComputedStyle(e);
        return [s.fontWeight, s.fontStyle, s.borderTopStyle, s.borderBottomStyle].join(' ');
    })""")
    assert len(set(shapes)) == len(KINDS), shapes


def test_preference_pairs_show_both_answers_and_lead_to_a_dpo_job(served, open_page):
    url, _, pairs_id = served
    p = open_page(url)
    page = p.open(f"#/data?file={pairs_id}")
    page.wait_for_selector(".pair .pair-row .tok")
    first = page.locator(".pair").first
    assert [x.inner_text() for x in first.locator(".pair-label").all()] == ["Chosen", "Rejected"]
    rows = first.locator(".pair-row")
    text = lambda i, kind: "".join(  # noqa: E731
        rows.nth(i).locator(f".k-{kind}").all_inner_texts())
    assert text(0, "target").strip() == "The cat sat on the mat."
    assert text(1, "target").strip() == "I would rather not say."
    assert text(0, "prompt").strip() == text(1, "prompt").strip() == "Where did the cat sit?"
    facts = page.inner_text(".report .facts")
    assert "Pairs" in facts and "12" in facts and "Chosen is the longer" in facts
    assert "kind=dpo" in page.get_attribute("a.button.primary", "href")
    assert page.locator("main .error").count() == 0


def test_did_it_learn_a_preference_run_reads_held_out_pairs(served, open_page):
    url, _, _ = served
    p = open_page(url)
    page = p.open(f"#/run/run:{PREF_RUN}")
    page.get_by_role("button", name="Measure").click()
    page.wait_for_selector("text=Chosen answer preferred", timeout=120_000)
    verdict = page.inner_text(".verdict")
    assert "preference" in verdict and "held-out pairs" in verdict, verdict
    assert "perplexity on this run's data" not in verdict  # no row of texts to misread
    row = page.locator("tr", has_text="Chosen answer preferred")
    assert "validation split, 6 pairs" in row.inner_text()
    assert "General text" in page.inner_text("main")
    p.shot("desktop-learned-preference")

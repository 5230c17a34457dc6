"""The web page against hostile text and other people's keys: a run name, a sample, a file
name and a file's text that hold HTML show as text and never run; each API key sees only its
own jobs, the key travels as a bearer token (no cookie), and the page's headers allow
scripts and connections to this server only."""

from __future__ import annotations

import json
from urllib.parse import quote

import httpx
import pytest
from serve_helpers import running_server

HOSTILE_RUN = "<img src=x onerror=alert(1)>"
HOSTILE_PROMPT = "<script>window.__xss=1</script>"
HOSTILE_TEXT = '<img src=x onerror="window.__xss=2">'
HOSTILE_FILE = "<b onmouseover=alert(1)>.jsonl"
HOSTILE_DATA = "<script>window.__xss=3</script>"

# Anything built from the hostile strings as HTML rather than text: the page itself has no
# <img>, <b> or inline <script>, and sets no inline handlers.
INJECTED = "img, b, script:not([src]), [onerror], [onmouseover]"


@pytest.fixture(scope="module")
def runs_folder(tiny_gpt2, session_lines, tmp_path_factory):
    """A finished command-line run whose folder name is HTML, with a hostile sample added
    to its samples.jsonl."""
    import lmtune

    runs = tmp_path_factory.mktemp("runs")
    lmtune.train(str(session_lines), model=str(tiny_gpt2), out=str(runs / HOSTILE_RUN),
                 method="lora", max_steps=6, lr=2e-2, log_every=2, eval_every=3,
                 sample_every=3, sample_max_new_tokens=8, split_on="\n", block_size=64,
                 precision="fp32", device="cpu", seed=0)
    with open(runs / HOSTILE_RUN / "samples.jsonl", "a", encoding="utf-8") as f:
        f.write(json.dumps({"step": 1, "prompt": HOSTILE_PROMPT, "text": HOSTILE_TEXT,
                            "copied_tokens": 0, "verbatim": False}) + "\n")
    return runs


def assert_nothing_ran(p) -> None:
    page = p.page
    assert page.evaluate("() => window.__xss") is None
    assert p.dialogs == []
    assert page.locator(INJECTED).count() == 0, page.eval_on_selector_all(
        INJECTED, "els => els.map(e => e.outerHTML)")


def test_hostile_run_name_sample_and_file_show_as_text(tiny_gpt2, home, runs_folder,
                                                        open_page):
    with running_server([tiny_gpt2], runs=str(runs_folder)) as (url, _):
        p = open_page(url)
        page = p.open("#/")
        link = page.get_by_role("link", name=HOSTILE_RUN, exact=True)
        link.wait_for()
        assert_nothing_ran(p)

        # The run's page: its name as the title, the hostile sample as text.
        link.click()
        page.wait_for_url("**#/run/*")
        page.wait_for_selector(f".samples li >> text={HOSTILE_PROMPT}")
        assert page.inner_text("h1") == HOSTILE_RUN
        sample = page.locator(".samples li", has_text=HOSTILE_PROMPT).inner_text()
        assert HOSTILE_PROMPT in sample and HOSTILE_TEXT in sample
        assert page.locator("main .error").count() == 0
        assert_nothing_ran(p)
        p.shot("security-hostile-run")

        # A file whose name is HTML, uploaded through the form, and its text in the preview.
        page = p.open("#/data")
        rows = [{"text": f"{HOSTILE_DATA} the cat sat on the mat"}] * 4
        page.set_input_files("input[type=file]", files=[{
            "name": HOSTILE_FILE, "mimeType": "application/jsonl",
            "buffer": "".join(json.dumps(r) + "\n" for r in rows).encode()}])
        page.get_by_role("button", name="Upload").click()
        page.wait_for_url("**#/data?file=*")
        page.wait_for_selector(".examples .tok")
        assert HOSTILE_DATA in page.inner_text(".examples li:first-child")
        file_link = page.get_by_role("link", name=HOSTILE_FILE, exact=True)
        file_link.hover()
        assert f"How training will read {HOSTILE_FILE}" in page.inner_text("main")
        assert_nothing_ran(p)
        p.shot("security-hostile-file")


def upload(url: str, key: str) -> dict:
    lines = "".join(json.dumps({"text": f"the cat sat on the mat {i}"}) + "\n"
                    for i in range(20))
    r = httpx.post(f"{url}/v1/files", headers={"Authorization": f"Bearer {key}"},
                   data={"purpose": "fine-tune"}, files={"file": ("lines.jsonl", lines)})
    assert r.status_code == 200, r.text
    return r.json()


def give_key(page, key: str) -> None:
    page.get_by_label("Key", exact=True).fill(key)
    page.get_by_role("button", name="Use this key").click()


def test_key_dialog_and_each_key_sees_only_its_own_jobs(tiny_gpt2, home, tmp_path,
                                                        open_page):
    keys = tmp_path / "keys.txt"
    keys.write_text("key-one\nkey-two\n", encoding="utf-8")
    with running_server([tiny_gpt2], api_keys_file=str(keys),
                        runs=str(tmp_path / "runs")) as (url, state):
        a = {"Authorization": "Bearer key-one"}
        file = upload(url, "key-one")
        r = httpx.post(f"{url}/v1/fine_tuning/jobs", headers=a, json={
            "model": next(iter(state.models)), "training_file": file["id"]})
        assert r.status_code == 200, r.text
        job = r.json()
        # No workers: the job waits, and is still A's to see.
        assert job["status"] in ("validating_files", "queued")

        # A: the page loads with no key, asks for one, refuses a wrong one, takes the right.
        pa = open_page(url)
        page = pa.open("#/")
        dialog = page.locator("#key-dialog")
        dialog.wait_for(state="visible")
        assert page.locator("#key-error").is_hidden()
        give_key(page, "wrong-key")
        page.wait_for_selector("#key-error", state="visible")
        assert "not accepted" in page.inner_text("#key-error")
        assert dialog.is_visible()
        with page.expect_request(lambda req: req.url.endswith("/lmtune/runs") and
                                 req.headers.get("authorization") == "Bearer key-one"):
            give_key(page, "key-one")
        page.get_by_role("link", name=job["id"], exact=True).wait_for()
        assert dialog.is_hidden()
        row = page.locator("table.runs tbody tr", has_text=job["id"])
        assert row.locator(".badge").inner_text() in ("validating files", "queued")
        assert pa.context.cookies() == []
        assert not any("key-one" in u for u in pa.requests)  # never in an address

        # B: neither the API nor the page with the other key shows any of A's work.
        b = {"Authorization": "Bearer key-two"}
        assert httpx.get(f"{url}/lmtune/runs/{job['id']}", headers=a).status_code == 200
        assert httpx.get(f"{url}/lmtune/runs/{job['id']}", headers=b).status_code == 404
        assert job["id"] not in httpx.get(f"{url}/lmtune/runs", headers=b).text
        pb = open_page(url)
        page = pb.open("#/")
        give_key(page, "key-two")
        page.get_by_text("No runs yet").wait_for()
        assert job["id"] not in page.inner_text("main")
        page = pb.open(f"#/run/{job['id']}")
        page.wait_for_selector("main .error")
        assert "no such run or job" in page.inner_text("main .error")
        assert pb.context.cookies() == []



def csp(response) -> dict[str, list[str]]:
    policy = response.headers["content-security-policy"]
    return {d.split()[0]: d.split()[1:] for d in policy.split(";") if d.strip()}


def test_page_is_open_with_strict_csp_and_the_api_is_not(tiny_gpt2, home):
    with running_server([tiny_gpt2], api_key="key-one") as (url, _):
        for path in ("/", "/static/js/app.js", "/static/style.css"):
            r = httpx.get(url + path)
            assert r.status_code == 200, path
            policy = csp(r)
            assert policy["default-src"] == ["'none'"], path
            assert policy["script-src"] == ["'self'"], path
            assert policy["connect-src"] == ["'self'"], path
            assert "set-cookie" not in r.headers
        assert "<script src=" in httpx.get(url + "/").text

        for path in ("/lmtune/runs", "/lmtune/config", "/v1/files", "/v1/models",
                     f"/lmtune/runs/{quote('run:x', safe='')}"):
            assert httpx.get(url + path).status_code == 401, path
        ok = httpx.get(f"{url}/lmtune/runs", headers={"Authorization": "Bearer key-one"})
        assert ok.status_code == 200 and "set-cookie" not in ok.headers

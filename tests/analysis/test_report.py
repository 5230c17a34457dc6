"""The run report: training writes loss.png and report.html; the HTML stands alone (no
network resource: the image is inlined); `lmtune report RUN` writes them again."""

from __future__ import annotations

import base64
from html.parser import HTMLParser

from lmtune.cli import main

PNG = b"\x89PNG\r\n\x1a\n"


class _Refs(HTMLParser):
    """Every attribute that can make a browser fetch something, and every tag."""

    def __init__(self):
        super().__init__()
        self.refs: list[str] = []
        self.tags: set[str] = set()

    def handle_starttag(self, tag, attrs):
        self.tags.add(tag)
        for name, value in attrs:
            if name in ("src", "href", "srcset", "data", "poster", "action", "background"):
                self.refs.append(value or "")


def _parse(html: str) -> _Refs:
    parser = _Refs()
    parser.feed(html)
    return parser


def test_training_writes_a_self_contained_report(full_run):
    out = full_run.out
    assert (out / "loss.png").read_bytes()[:8] == PNG
    html = (out / "report.html").read_text(encoding="utf-8")
    parsed = _parse(html)
    assert parsed.refs and all(r.startswith("data:") for r in parsed.refs), parsed.refs
    assert not parsed.tags & {"script", "link", "iframe", "object", "embed"}
    assert "@import" not in html and "url(" not in html
    inlined = parsed.refs[0].split("base64,", 1)[1]
    assert base64.b64decode(inlined) == (out / "loss.png").read_bytes()
    # The parts the report promises: curves, final metrics, samples with their memorisation
    # figures, the before/after table, the config.
    for needle in ("Loss and learning rate", "best validation loss", "tokens/s",
                   "longest copied run", "Before and after", "base model", "split_on"):
        assert needle in html, needle


def test_report_command_rewrites_the_files(lora_run, capsys):
    out = lora_run.out
    (out / "report.html").unlink()
    (out / "loss.png").unlink()
    assert main(["report", str(out), "--no-compare"]) == 0
    assert "report.html" in capsys.readouterr().out
    assert "left out (--no-compare)" in (out / "report.html").read_text(encoding="utf-8")
    assert main(["report", str(out)]) == 0
    html = (out / "report.html").read_text(encoding="utf-8")
    assert "base model" in html and (out / "loss.png").read_bytes()[:8] == PNG
    assert all(r.startswith("data:") for r in _parse(html).refs)


def test_report_refuses_a_folder_that_is_not_a_run(tiny_gpt2, capsys):
    assert main(["report", str(tiny_gpt2)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "not a run folder" in err
    assert not (tiny_gpt2 / "report.html").exists()

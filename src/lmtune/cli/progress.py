"""Draws the library's stages (lmtune/progress.py) on stderr, so that no command sits silent:
a bar with an ETA for a stage that knows how much work it has, a line for one that does not.
A stage that ends within DELAY seconds draws nothing."""

from __future__ import annotations

import sys
import threading

from tqdm.auto import tqdm

DELAY = 1.0      # seconds before a stage shows itself
SAY_DONE = 5.0   # a stage without a bar that took longer says when it ended


class StageBars:
    def __init__(self, stream=None):
        self.stream = stream or sys.stderr
        self.open: list[dict] = []  # nested stages, innermost last

    def __call__(self, event: str, data: dict) -> None:
        if event == "stage":
            getattr(self, "_" + data["state"])(data)

    def say(self, text: str) -> None:
        tqdm.write(text, file=self.stream)  # above any bar being drawn

    def _start(self, d: dict) -> None:
        entry: dict = {"name": d["name"], "bar": None, "timer": None, "said": False}
        if d["total"]:
            entry["bar"] = tqdm(total=d["total"], desc=d["name"], unit=f" {d['unit']}"
                                if d["unit"] else "it", delay=DELAY, leave=False,
                                file=self.stream, dynamic_ncols=True)
        elif DELAY <= 0:
            entry["said"] = True
            self.say(f"{d['name']} ...")
        else:
            def announce() -> None:
                entry["said"] = True
                self.say(f"{d['name']} ...")
            entry["timer"] = threading.Timer(DELAY, announce)
            entry["timer"].daemon = True
            entry["timer"].start()
        self.open.append(entry)

    def _find(self, d: dict) -> dict | None:
        for entry in reversed(self.open):
            if entry["name"] == d["name"]:
                return entry
        return None

    def _advance(self, d: dict) -> None:
        entry = self._find(d)
        if entry is not None and entry["bar"] is not None:
            entry["bar"].update(d["done"] - entry["bar"].n)

    def _end(self, d: dict) -> None:
        entry = self._find(d)
        if entry is None:
            return
        self.open.remove(entry)
        if entry["bar"] is not None:
            entry["bar"].close()
        if entry["timer"] is not None:
            entry["timer"].cancel()
            if entry["said"] and d["seconds"] >= SAY_DONE:
                self.say(f"{d['name']}: done in {d['seconds']:.0f} s")

    def close(self) -> None:
        for entry in self.open:
            if entry["bar"] is not None:
                entry["bar"].close()
            if entry["timer"] is not None:
                entry["timer"].cancel()
        self.open.clear()

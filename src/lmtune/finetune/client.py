"""A client of the fine-tuning API, for `lmtune jobs ...` and the Python API: the same HTTP
routes an `openai` client uses (httpx, which FastAPI's stack already brings), so what the
command line shows is what any client sees."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

from lmtune.config import SERVER_URL
from lmtune.errors import UserError

FINISHED = ("succeeded", "failed", "cancelled")


class JobsClient:
    def __init__(self, url: str | None = None, api_key: str | None = None,
                 timeout: float = 60.0):
        self.url = (url or SERVER_URL).rstrip("/")
        key = api_key or os.environ.get("LMTUNE_API_KEY")
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self.http = httpx.Client(base_url=self.url + "/v1", headers=headers, timeout=timeout)

    def _call(self, method: str, path: str, **kwargs) -> dict:
        try:
            response = self.http.request(method, path, **kwargs)
        except httpx.HTTPError as e:
            raise UserError(f"cannot reach the lmtune server at {self.url}: {e}",
                            hint="start it with lmtune serve, or pass --url") from None
        if response.status_code >= 400:
            try:
                message = response.json()["error"]["message"]
            except (ValueError, KeyError, TypeError):
                message = response.text[:200]
            raise UserError(f"the server answered {response.status_code}: {message}")
        return response.json()

    def upload(self, path: str) -> dict:
        file = Path(path)
        if not file.is_file():
            raise UserError(f"no such file: {path}", hint="pass a .jsonl training file")
        with open(file, "rb") as f:
            return self._call("POST", "/files", files={"file": (file.name, f)},
                              data={"purpose": "fine-tune"})

    def create(self, data: str, model: str, *, validation: str | None = None,
               suffix: str | None = None, seed: int | None = None,
               hyperparameters: dict | None = None) -> dict:
        body = {"model": model, "training_file": self.upload(data)["id"]}
        if validation:
            body["validation_file"] = self.upload(validation)["id"]
        body.update({k: v for k, v in (("suffix", suffix), ("seed", seed)) if v is not None})
        if hyperparameters:
            body["method"] = {"type": "supervised",
                              "supervised": {"hyperparameters": hyperparameters}}
        return self._call("POST", "/fine_tuning/jobs", json=body)

    def list(self, limit: int = 20) -> list[dict]:
        return self._call("GET", "/fine_tuning/jobs", params={"limit": limit})["data"]

    def show(self, job_id: str) -> dict:
        return self._call("GET", f"/fine_tuning/jobs/{job_id}")

    def action(self, job_id: str, what: str) -> dict:
        return self._call("POST", f"/fine_tuning/jobs/{job_id}/{what}")

    def events(self, job_id: str, limit: int = 100) -> list[dict]:
        """Oldest first (the API pages newest first)."""
        page = self._call("GET", f"/fine_tuning/jobs/{job_id}/events",
                          params={"limit": limit})["data"]
        return list(reversed(page))

    def follow(self, job_id: str, poll: float = 1.0) -> Iterator[dict]:
        """Each new event as it arrives, until the job has finished."""
        seen: set[str] = set()
        while True:
            job = self.show(job_id)
            for event in self.events(job_id):
                if event["id"] not in seen:
                    seen.add(event["id"])
                    yield event
            if job["status"] in FINISHED:
                return
            time.sleep(poll)

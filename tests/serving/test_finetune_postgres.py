"""The fine-tuning store on a real PostgreSQL server (Debian's, which `.ci/run` installs), with
two `lmtune worker` processes on it competing for the same queue: every job is trained once,
by one of them."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

QA = [("why did the programmer quit", "because he did not get arrays"),
      ("what is two plus four", "six"), ("where did the dog run", "in the park")]


def _pg_bin() -> Path | None:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    return found[-1].parent if found else (Path(shutil.which("initdb")).parent
                                           if shutil.which("initdb") else None)


def _as_postgres(args: list[str]) -> list[str]:
    # PostgreSQL will not run as root; CI runs as root, a developer usually not.
    return ["runuser", "-u", "postgres", "--", *args] if os.geteuid() == 0 else args


@pytest.fixture(scope="module")
def postgres():
    bin_dir = _pg_bin()
    if bin_dir is None:
        pytest.skip("needs PostgreSQL's server (.ci/run installs Debian's postgresql)")
    # Not under pytest's tmp folders: those are private to root, and the server runs as
    # the postgres user.
    root = Path(tempfile.mkdtemp(prefix="lmtune-pg-"))
    data = root / "data"
    if os.geteuid() == 0:
        shutil.chown(root, "postgres", "postgres")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    subprocess.run(_as_postgres([str(bin_dir / "initdb"), "-D", str(data), "-A", "trust",
                                 "-U", "lmtune"]), check=True, capture_output=True)
    subprocess.run(_as_postgres([str(bin_dir / "pg_ctl"), "-D", str(data), "-l",
                                 str(root / "log"), "-w", "-o",
                                 f"-p {port} -h 127.0.0.1 -k {root}", "start"]),
                   check=True, capture_output=True)
    try:
        yield f"postgresql+psycopg://lmtune@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run(_as_postgres([str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "fast",
                                     "stop"]), capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


def test_two_workers_share_one_queue_and_each_job_trains_once(postgres, tiny_gpt2, tmp_path,
                                                              monkeypatch):
    from lmtune.finetune.jobs import create_job, validate_job
    from lmtune.finetune.store import Store

    monkeypatch.setenv("LMTUNE_HOME", str(tmp_path / "home"))
    store = Store(postgres)
    data = tmp_path / "qa.jsonl"
    data.write_text("\n".join(json.dumps({"messages": [
        {"role": "user", "content": q}, {"role": "assistant", "content": a}]})
        for q, a in QA * 4))
    store.add_file({"id": "file-qa", "owner": "local", "purpose": "fine-tune",
                    "filename": "qa.jsonl", "bytes": data.stat().st_size, "created_at": 0,
                    "path": str(data)})
    jobs = [create_job(store, "local", {"model": str(tiny_gpt2), "training_file": "file-qa",
                                        "hyperparameters": {"n_epochs": 2}})
            for _ in range(4)]
    assert all(validate_job(store, job) for job in jobs)
    env = {**os.environ, "LMTUNE_HOME": str(tmp_path / "home")}
    workers = [subprocess.Popen([sys.executable, "-m", "lmtune", "worker", "--store", postgres,
                                 "--name", f"w{i}", "--once", "--precision", "fp32",
                                 "--device", "cpu"], env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True) for i in range(2)]
    for worker in workers:
        _, err = worker.communicate(timeout=600)
        assert worker.returncode == 0, err
    done = [store.job(job["id"]) for job in jobs]
    assert [j["status"] for j in done] == ["succeeded"] * 4
    started = [[json.loads(e["data"])["worker"] for e in store.events(j["id"], None, 1000)
                if e["message"] == "Fine-tuning job started"] for j in done]
    assert all(len(by) == 1 for by in started)  # each job trained once, by one worker
    assert {by[0] for by in started} == {"w0", "w1"}  # and both workers took jobs

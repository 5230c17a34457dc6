"""The fine-tuning store's own rules: a job is claimed by one worker only, in the order jobs
came, and a job whose worker stopped beating (it died) goes back to the queue."""

from __future__ import annotations

import json
import time

from lmtune.finetune.jobs import auto_epochs
from lmtune.finetune.store import Store


def _job(store: Store, job_id: str, status: str = "queued") -> dict:
    return store.add_job({"id": job_id, "owner": "local", "status": status,
                          "request": json.dumps({"model": "m", "training_file": "f"}),
                          "settings": "{}", "created_at": int(time.time()),
                          "result_files": "[]", "run_dir": str(store.runs_dir / job_id)})


def test_jobs_are_claimed_once_each_in_the_order_they_came(tmp_path):
    store = Store(f"sqlite:///{tmp_path / 'db.sqlite'}")
    for name in ("ftjob-1", "ftjob-2"):
        _job(store, name)
    assert store.claim("a")["id"] == "ftjob-1"
    assert store.claim("b")["id"] == "ftjob-2"
    assert store.claim("c") is None
    assert store.job("ftjob-1")["worker"] == "a"
    assert store.home == tmp_path  # files and runs live beside the database


def test_a_dead_workers_job_goes_back_to_the_queue(tmp_path):
    store = Store(f"sqlite:///{tmp_path / 'db.sqlite'}")
    _job(store, "ftjob-dead")
    _job(store, "ftjob-alive")
    store.claim("gone")
    store.claim("here")
    store.update_job("ftjob-dead", heartbeat=time.time() - 120)
    assert store.requeue_abandoned(older_than=30) == ["ftjob-dead"]
    assert store.job("ftjob-dead")["status"] == "queued"
    assert store.job("ftjob-alive")["status"] == "running"
    assert store.claim("next")["id"] == "ftjob-dead"  # resumed by another worker


def test_auto_epochs_follow_openais_rule():
    assert [auto_epochs(n) for n in (5, 20, 34, 100, 9000, 30000)] == [20, 5, 3, 3, 2, 1]


def test_a_store_that_cannot_be_used_is_one_error_line(capsys):
    from lmtune.cli.main import main

    for store, words in [("nonsense", "is not a database URL lmtune can use"),
                         ("postgresql+psycopg://lmtune@127.0.0.1:1/none",
                          "the database cannot be opened")]:
        assert main(["worker", "--store", store, "--once"]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: --store ") and words in err, err
        assert "Traceback" not in err

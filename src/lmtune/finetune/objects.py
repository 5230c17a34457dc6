"""Rows of the store as the JSON objects OpenAI's API returns, field for field with
openai-python's types (types/file_object.py, types/fine_tuning/*.py). A job also carries
"lmtune", the lmtune options it trains with; openai-python keeps fields it does not know in
`model_extra`."""

from __future__ import annotations

import json

from lmtune.finetune.jobs import job_options

ORGANIZATION = "org-lmtune"


def file_object(row: dict) -> dict:
    return {"id": row["id"], "object": "file", "bytes": row["bytes"],
            "created_at": row["created_at"], "filename": row["filename"],
            "purpose": row["purpose"], "status": "processed", "status_details": None,
            "expires_at": None}


def job_object(row: dict) -> dict:
    request, settings = json.loads(row["request"]), json.loads(row["settings"])
    hyper = {k: settings[k] for k in ("n_epochs", "batch_size", "learning_rate_multiplier")}
    kind = settings.get("method_type", "supervised")
    method_hyper = {**hyper, "beta": settings.get("beta", "auto")} if kind == "dpo" else hyper
    return {
        "id": row["id"], "object": "fine_tuning.job", "created_at": row["created_at"],
        "model": request["model"], "training_file": request["training_file"],
        "validation_file": request.get("validation_file"), "status": row["status"],
        "error": json.loads(row["error"]) if row["error"] else None,
        "fine_tuned_model": row["fine_tuned_model"], "finished_at": row["finished_at"],
        "hyperparameters": hyper,
        "method": {"type": kind, kind: {"hyperparameters": method_hyper}},
        "organization_id": ORGANIZATION, "result_files": json.loads(row["result_files"]),
        "seed": settings["seed"], "trained_tokens": row["trained_tokens"],
        "estimated_finish": row["estimated_finish"] if row["status"] == "running" else None,
        "integrations": [], "metadata": request.get("metadata"),
        "user_provided_suffix": request.get("suffix"),
        "lmtune": job_options(settings),
    }


def event_object(row: dict) -> dict:
    return {"id": row["id"], "object": "fine_tuning.job.event",
            "created_at": row["created_at"], "level": row["level"],
            "message": row["message"], "type": row["type"],
            "data": json.loads(row["data"]) if row["data"] else None}


def checkpoint_object(row: dict, job: dict) -> dict:
    metrics = json.loads(row["metrics"])
    return {"id": row["id"], "object": "fine_tuning.job.checkpoint",
            "created_at": row["created_at"], "fine_tuning_job_id": row["job_id"],
            "fine_tuned_model_checkpoint": checkpoint_model(job, row["step"]),
            "metrics": {"step": row["step"], **metrics}, "step_number": row["step"]}


def checkpoint_model(job: dict, step: int) -> str:
    return f"{model_name(job)}:ckpt-step-{step}"


def model_name(job: dict) -> str:
    """ft:<base>:<suffix>:<job>, OpenAI's pattern (ft:gpt-4o-mini:org:suffix:id)."""
    request = json.loads(job["request"])
    base = request["model"].rstrip("/").rsplit("/", 1)[-1]
    return f"ft:{base}:{request.get('suffix') or 'lmtune'}:{job['id'].removeprefix('ftjob-')}"


def page(data: list[dict], limit: int, more: bool | None = None) -> dict:
    return {"object": "list", "data": data,
            "has_more": len(data) >= limit if more is None else more,
            "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None}

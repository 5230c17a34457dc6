"""The run report: `loss.png` and a self-contained `report.html` in the run folder.

Written at the end of training and by `lmtune report RUN`. Everything comes from the run
folder (config.yaml, metrics.jsonl, samples.jsonl, final/lmtune.json), plus before/after
samples on the run's sample prompts from the base and the tuned model with the same seed.
The HTML references nothing outside itself (the PNG is inlined as base64, the CSS is inline),
so it opens offline and can be mailed as one file.
"""

from __future__ import annotations

import base64
import dataclasses
import html
import json
import statistics
from dataclasses import dataclass
from pathlib import Path

from lmtune.atomic import is_disk_full, write_file
from lmtune.config import TrainConfig
from lmtune.errors import UserError
from lmtune.progress import stage
from lmtune.run.folder import RunFolder
from lmtune.tasks.generate import perplexity

BEFORE_AFTER_SAMPLES = 2  # per prompt, from each model
LANGUAGE_MODELS = ("generate", "preference")  # tasks whose runs generate text


@dataclass
class ReportResult:
    html: Path
    loss_png: Path
    compared: bool  # the before/after samples are in it


def _write_atomic(path: Path, write) -> None:
    """`write(tmp)`, then rename over `path`: a failed write keeps the old file, and a full
    disk is one clear error."""
    try:
        write_file(path, write)
    except OSError as e:
        if not is_disk_full(e):
            raise
        raise UserError(f"disk full while writing {path}: {e.strerror}",
                        hint=f"free disk space, then run: lmtune report {path.parent}") from None


# ---------------------------------------------------------------------------------------------
# The curves.

def plot_loss(metrics: list[dict], path: Path) -> Path:
    """Train and validation loss against steps, and the learning rate below them."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    train = [r for r in metrics if "loss" in r]
    evals = [r for r in metrics if "val_loss" in r]
    fig = Figure(figsize=(7.5, 5.2), layout="constrained")
    FigureCanvasAgg(fig)
    top, bottom = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    if train:
        top.plot([r["step"] for r in train], [r["loss"] for r in train], color="#3b6ea5",
                 label="train loss")
    if evals:
        top.plot([r["step"] for r in evals], [r["val_loss"] for r in evals], "o-",
                 color="#d1603d", label="validation loss")
    top.set_ylabel("loss (nats per token)")
    top.grid(alpha=0.3)
    if train or evals:
        top.legend()
    bottom.plot([r["step"] for r in train], [r["lr"] for r in train], color="#555555")
    bottom.set_ylabel("learning rate")
    bottom.set_xlabel("step")
    bottom.grid(alpha=0.3)
    bottom.ticklabel_format(axis="y", style="sci", scilimits=(0, 0))
    _write_atomic(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    return path


# ---------------------------------------------------------------------------------------------
# The page.

_CSS = """
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2em auto;
       max-width: 1100px; padding: 0 1em; color: #222; }
h1 { font-size: 1.5em; margin-bottom: 0.2em; } h2 { font-size: 1.15em; margin-top: 1.8em; }
table { border-collapse: collapse; margin: 0.5em 0; width: 100%; }
th, td { border: 1px solid #ddd; padding: 0.35em 0.6em; text-align: left; vertical-align: top; }
th { background: #f4f6f8; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
.sample { white-space: pre-wrap; font-family: ui-monospace, Menlo, Consolas, monospace;
          font-size: 13px; }
.prompt { color: #888; } .copy { background: #fde2dc; } .muted { color: #777; }
img { max-width: 100%; } table.kv { width: auto; min-width: 50%; }
"""


def _e(value) -> str:
    return html.escape(str(value))


def _num(value, digits: int = 4) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}g}" if abs(value) < 1e-3 or abs(value) >= 1e5 else \
            f"{value:.{digits}f}".rstrip("0").rstrip(".")
    return f"{value:,}" if isinstance(value, int) else str(value)


def _table(rows: list[list[str]], header: list[str] | None = None, css: str = "") -> str:
    head = "<tr>" + "".join(f"<th>{h}</th>" for h in header) + "</tr>" if header else ""
    body = "".join("<tr>" + "".join(row) + "</tr>" for row in rows)
    return f'<table class="{css}">{head}{body}</table>' if css else f"<table>{head}{body}</table>"


def _sample_cell(prompt: str, text: str) -> str:
    return (f'<td class="sample"><span class="prompt">{_e(prompt)}</span>{_e(text)}</td>')


def summarize(metrics: list[dict]) -> dict:
    train = [r for r in metrics if "loss" in r]
    evals = [r for r in metrics if "val_loss" in r]
    copies = [r for r in metrics if "copy_rate" in r]
    best = min(evals, key=lambda r: r["val_loss"]) if evals else None
    return {
        "steps": train[-1]["step"] if train else 0,
        "epochs": train[-1].get("epoch") if train else None,
        "tokens": train[-1].get("tokens") if train else None,
        "final_train_loss": train[-1]["loss"] if train else None,
        "final_val_loss": evals[-1]["val_loss"] if evals else None,
        "final_val_perplexity": perplexity(evals[-1]["val_loss"]) if evals else None,
        "best_val_loss": best["val_loss"] if best else None,
        "best_step": best["step"] if best else None,
        "median_tokens_per_s": statistics.median(r["tokens_per_s"] for r in train)
        if train else None,
        "last_copy_rate": copies[-1]["copy_rate"] if copies else None,
        "final_val_bits_per_char": evals[-1].get("val_bits_per_char") if evals else None,
    }


def _extension(info: dict, s: dict, samples: list[dict]) -> list[str]:
    """A run on an extended tokenizer (train --extend-tokenizer): what the new pieces saved,
    the loss per character (which, unlike the loss per token, compares with a run on the
    base tokenizer), and how much of the last samples is in the new script."""
    ext = info.get("tokenizer_extension")
    if not ext:
        return []
    before, after = ext.get("chars_per_token_before"), ext.get("chars_per_token_after")
    gain = f" ({after / before:.2f}x)" if before and after else ""
    last = [r["text"] for r in samples if r["step"] == samples[-1]["step"]] if samples else []
    chars = [c for t in last for c in t if not c.isspace()]
    share = sum(ord(c) >= 0x80 for c in chars) / len(chars) if chars else None
    rows = [["base model", _e(ext.get("base_model"))],
            ["pieces added", f"{_num(ext.get('added'))} to {_num(ext.get('base_vocab'))}"],
            ["characters per token on the training data, before -> after",
             f"{_num(before, 3)} -> {_num(after, 3)}{gain}"],
            ["final validation loss per character (bits)", _num(s["final_val_bits_per_char"])],
            ["non-ASCII share of the last samples' characters", _num(share, 3)]]
    return ["<h2>Extended tokenizer</h2>",
            _table([[f"<th>{k}</th>", f"<td>{v}</td>"] for k, v in rows], css="kv")]


REWARDS = ("reward_accuracy", "reward_margin", "rewards_chosen", "rewards_rejected")


def _rewards(metrics: list[dict]) -> list[str]:
    """A preference run's rewards on the held-out pairs at each evaluation (--task
    preference): how often the chosen answer wins, by how much, and each answer's reward."""
    evals = [r for r in metrics if "val_loss" in r and "reward_accuracy" in r]
    if not evals:
        return []
    rows = [[f'<td class="num">{r["step"]}</td>', f'<td class="num">{_num(r["val_loss"])}</td>',
             *(f'<td class="num">{_num(r[k], 3)}</td>' for k in REWARDS)] for r in evals]
    return ["<h2>Preferences on the held-out pairs</h2>",
            '<p class="muted">reward accuracy: the share of pairs whose chosen answer has the '
            'higher reward; a reward is beta x the log-probability gained over the base model '
            '(dpo) or beta x the mean token log-probability (orpo, simpo)</p>',
            _table(rows, ["step", "validation loss", "reward accuracy", "reward margin",
                          "chosen reward", "rejected reward"])]


def render_html(run: Path, cfg: TrainConfig, info: dict, metrics: list[dict],
                samples: list[dict], png: bytes, before_after: list | None,
                note: str | None = None) -> str:
    s = summarize(metrics)
    summary_rows = [
        ["model", _e(cfg.model or info.get("base_model"))],
        ["method", _e(cfg.method or info.get("method"))],
        ["steps (epochs)", f"{_num(s['steps'])} ({_num(s['epochs'], 2)})"],
        ["tokens trained", _num(s["tokens"])],
        ["final train loss", _num(s["final_train_loss"])],
        ["final validation loss (perplexity)",
         f"{_num(s['final_val_loss'])} ({_num(s['final_val_perplexity'], 3)})"]
        if info.get("task") != "preference" else  # not a token loss: no perplexity
        ["final validation loss", _num(s["final_val_loss"])],
        ["best validation loss", f"{_num(s['best_val_loss'])} at step {_num(s['best_step'])}"],
        ["throughput (median)", f"{_num(s['median_tokens_per_s'], 1)} tokens/s"],
        ["share of the last samples that copy a training example verbatim",
         _num(s["last_copy_rate"], 3)],
    ]
    if s["final_val_bits_per_char"] is not None:  # comparable across tokenizers
        summary_rows.insert(6, ["final validation loss per character (bits)",
                                _num(s["final_val_bits_per_char"])])
    parts = [f"<h1>lmtune run: {_e(run.name)}</h1>",
             f'<p class="muted">{_e(run.resolve())}</p>',
             _table([[f"<th>{k}</th>", f"<td>{v}</td>"] for k, v in summary_rows], css="kv"),
             "<h2>Loss and learning rate</h2>",
             f'<img alt="loss curves" src="data:image/png;base64,'
             f'{base64.b64encode(png).decode()}">', *_rewards(metrics),
             *_extension(info, s, samples)]
    parts.append("<h2>Before and after, on the sample prompts (same seed)</h2>")
    if before_after:
        rows = []
        for row in before_after:
            for i, (b, t) in enumerate(zip(row.base, row.tuned)):
                label = (_e(row.prompt) or '<span class="muted">(none)</span>') if i == 0 \
                    else ""
                rows.append([f"<td>{label}</td>",
                             _sample_cell(row.prompt, b), _sample_cell(row.prompt, t)])
        parts.append(_table(rows, ["prompt", "base model", "fine-tuned"]))
    else:
        parts.append(f'<p class="muted">{_e(note or "not generated")}</p>')
    parts.append("<h2>Samples during training</h2>")
    if samples:
        rows = [[f'<td class="num">{r["step"]}</td>', _sample_cell(r["prompt"], r["text"]),
                 f'<td class="num">{_num(r.get("copied_tokens"))}</td>',
                 f'<td{" class=copy" if r.get("verbatim") else ""}>'
                 f'{"yes" if r.get("verbatim") else "no" if "verbatim" in r else "-"}</td>']
                for r in samples]
        parts.append(_table(rows, ["step", "sample", "longest copied run (tokens)",
                                   "verbatim copy"]))
    else:
        parts.append('<p class="muted">no samples were written</p>')
    parts.append("<h2>Config</h2>")
    # JSON spelling shows what plain text hides: "\n" for a newline, null for unset.
    parts.append(_table([[f"<th>{_e(k)}</th>",
                          f'<td class="sample">{_e(json.dumps(v, ensure_ascii=False))}</td>']
                         for k, v in dataclasses.asdict(cfg).items()], css="kv"))
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>lmtune report: {_e(run.name)}</title><style>{_CSS}</style></head>"
            f"<body>{''.join(parts)}</body></html>\n")


# ---------------------------------------------------------------------------------------------
# Writing it.

def _check_run(run: RunFolder) -> None:
    if not run.config_file.is_file() or not run.metrics_file.is_file():
        raise UserError(f"{run.path} is not a run folder (it has no config.yaml and "
                        f"metrics.jsonl)", hint="pass the folder lmtune train wrote, e.g. "
                                                "runs/NAME-<time>")


def write_report(run: str | Path, *, pair=None, compare: bool = True, device: str = "auto",
                 trust_remote_code: bool = False, allow_pickle: bool = False,
                 left_out: str = "left out (--no-compare)") -> ReportResult:
    """Write loss.png and report.html into `run`. `pair` (a compare.ModelPair) skips loading
    the models for the before/after samples; `compare=False` leaves them out (`left_out`
    says why in the page)."""
    run = RunFolder(run)
    _check_run(run)
    cfg, info = run.config(), run.info()
    metrics, samples = run.records(run.metrics_file), run.records(run.samples_file)
    before_after, note = None, None
    if info.get("task", "generate") not in LANGUAGE_MODELS:
        note = f"not for a {info['task']} run"
    elif compare and not run.final.is_dir():
        note = "the run has no final model yet"
    elif compare:
        before_after = _before_after(run, cfg, info, pair, device, trust_remote_code,
                                     allow_pickle)
    else:
        note = left_out
    # Written only now: a model that fails to load leaves the folder as it was.
    loss_png = plot_loss(metrics, run.loss_png)
    page = render_html(run.path, cfg, info, metrics, samples, loss_png.read_bytes(),
                       before_after, note)
    _write_atomic(run.report_html, lambda tmp: tmp.write_bytes(page.encode("utf-8")))
    return ReportResult(html=run.report_html, loss_png=loss_png,
                        compared=before_after is not None)


def _before_after(run: RunFolder, cfg: TrainConfig, info: dict, pair, device: str,
                  trust_remote_code: bool, allow_pickle: bool):
    from lmtune.analysis.compare import ModelPair, same_seed_samples

    if pair is None:
        base = info.get("base_model") or cfg.model
        pair = ModelPair.load(base, str(run.path), device, "auto", trust_remote_code,
                              allow_pickle)
    prompts, chat = list(cfg.sample_prompts) or [""], False
    if info.get("task") == "preference":  # the held-out prompts the samples answered
        asked = dict.fromkeys(r["prompt"] for r in run.records(run.samples_file))
        prompts, chat = prompts if cfg.sample_prompts else list(asked) or [""], \
            info.get("format") == "chat"
    return same_seed_samples(pair, prompts, n=BEFORE_AFTER_SAMPLES, seed=cfg.seed,
                             max_new_tokens=cfg.sample_max_new_tokens, chat=chat)


def report_at_end(out: Path, model, tokenizer, device, autocast, emit) -> None:
    """The end-of-training hook: the tuned model is still in memory, so only the base is
    loaded (a LoRA run switches its adapter off instead). The weights are saved before this
    runs; a failure here is reported as a message and does not fail the run."""
    run = RunFolder(out)
    try:
        with stage("writing the report"):
            result = _report_at_end(run, out, model, tokenizer, device, autocast)
    except (UserError, OSError, ValueError, RuntimeError) as e:
        emit("message", {"text": f"run report not written: {e}"})
        return
    emit("report", {"html": str(result.html), "loss_png": str(result.loss_png)})


def _report_at_end(run: RunFolder, out: Path, model, tokenizer, device, autocast):
    from lmtune.analysis.compare import ModelPair
    from lmtune.models.resolve import resolve

    info, cfg = run.info(), run.config()
    # The base loads as training loaded it: the same command, the same trust.
    trust = dict(trust_remote_code=cfg.trust_remote_code, allow_pickle=cfg.allow_pickle)
    if info.get("task", "generate") not in LANGUAGE_MODELS:
        return write_report(out, compare=False)
    if not cfg.sample_every:
        return write_report(out, compare=False, left_out="left out: samples were turned off "
                                                         "(--sample-every 0)")
    if model is None:  # the tuned model is not whole in memory (FSDP): load final/
        return write_report(out, device=device.type, **trust)
    pair = ModelPair.around(model, tokenizer, resolve(str(out)), info["base_model"], device,
                            autocast, **trust)
    return write_report(out, pair=pair)

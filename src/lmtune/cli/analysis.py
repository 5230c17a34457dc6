"""Command handlers for eval, compare, diff and report. Each calls one library function and
prints its result: tables for people on stdout, or one JSON object with --json."""

from __future__ import annotations

import shutil
import textwrap

from lmtune.cli.output import g as _g, print_json as _print_json
from lmtune.config import CompareConfig, DiffConfig, EvalConfig, ReportConfig


# ---------------------------------------------------------------------------------------------
# eval

def cmd_eval(cfg: EvalConfig) -> int:
    from lmtune.analysis.evaluate import evaluate

    result = evaluate(cfg)
    if isinstance(result, dict) and result.get("task") == "preference":
        if cfg.json:
            _print_json(result)
        else:
            _print_preference_eval(result)
        return 0
    if isinstance(result, dict):  # a classification run
        if cfg.plot:
            from lmtune.tasks.classify.evaluate import plot_confusion
            plot_confusion(result, cfg.plot)
        if cfg.json:
            _print_json(result)
        else:
            _print_classifier_eval(result)
            if cfg.plot:
                print(f"confusion matrix plot: {cfg.plot}")
        return 0
    if cfg.json:
        _print_json(result.to_dict())
        return 0
    print(f"model: {result.model}")
    print(f"data:  {result.data} ({result.examples} examples, {result.tokens:,} tokens in the "
          f"loss, blocks of {result.block_size})")
    print(f"loss {result.loss:.4f}   perplexity {result.perplexity:.3f}")
    return 0


def _print_preference_eval(r: dict) -> None:
    from lmtune.cli.console import reward_line

    print(f"model: {r['model']}")
    print(f"data:  {r['data']} ({r['pairs']} pairs)")
    print(f"preference accuracy {r['preference_accuracy']:.4f} (the share of pairs whose "
          f"chosen answer the model finds more likely; mean log-probability chosen "
          f"{r['logp_chosen']:.3f}, rejected {r['logp_rejected']:.3f})")
    if "reward_accuracy" in r:
        against = f", against the base {r['reference']}" if r.get("reference") else ""
        print(f"as trained, {r['loss_type']} (beta {r['beta']:g}{against}): loss "
              f"{r['loss']:.4f}, {reward_line(r)}")


def _print_classifier_eval(r: dict) -> None:
    print(f"accuracy {r['accuracy']:.4f}   macro F1 {r['macro_f1']:.4f} (precision "
          f"{r['macro_precision']:.4f}, recall {r['macro_recall']:.4f}) on {r['examples']} "
          f"examples")
    base = r.get("majority_baseline") or {}
    if base:
        print(f"majority baseline (always {base.get('label')!r}): accuracy "
              f"{base.get('accuracy', 0):.4f}, macro F1 {base.get('macro_f1', 0):.4f}")
    labels = r.get("labels") or list(r.get("per_class", {}))
    width = max([5] + [len(str(label)) for label in labels])
    print(f"\n{'label':<{width}}  precision  recall      f1  support")
    for label in labels:
        c = r["per_class"][str(label)] if str(label) in r["per_class"] else r["per_class"][label]
        print(f"{str(label):<{width}}  {c['precision']:>9.4f}  {c['recall']:>6.4f}  "
              f"{c['f1']:>6.4f}  {c['support']:>7}")
    print("\nconfusion matrix (rows: true label, columns: predicted)")
    cell = max([4] + [len(str(v)) for row in r["confusion_matrix"] for v in row])
    short = [str(label)[:cell] for label in labels]
    print(" " * width + "  " + " ".join(f"{s:>{cell}}" for s in short))
    for label, row in zip(labels, r["confusion_matrix"]):
        print(f"{str(label):<{width}}  " + " ".join(f"{v:>{cell}}" for v in row))


# ---------------------------------------------------------------------------------------------
# compare

def _side_by_side(left: str, right: str, width: int) -> list[str]:
    a = textwrap.wrap(left, width) or [""]
    b = textwrap.wrap(right, width) or [""]
    rows = max(len(a), len(b))
    a, b = a + [""] * (rows - len(a)), b + [""] * (rows - len(b))
    return [f"{x:<{width}} | {y}" for x, y in zip(a, b)]


def cmd_compare(cfg: CompareConfig) -> int:
    from lmtune.analysis.compare import compare

    result = compare(cfg)
    if cfg.json:
        _print_json(result.to_dict())
        return 0
    print(f"base:  {result.base}\ntuned: {result.tuned}")
    if result.perplexity:
        print(f"\n{'perplexity on':<12} {'data':<28} {'base':>10} {'tuned':>10} {'change':>8}")
        for r in result.perplexity:
            change = 100 * (r.tuned_perplexity / r.base_perplexity - 1)
            print(f"{r.role:<12} {r.data[-28:]:<28} {r.base_perplexity:>10.3f} "
                  f"{r.tuned_perplexity:>10.3f} {change:>+7.1f}%")
        if any(r.base_tokens != r.tuned_tokens for r in result.perplexity):
            print("note: the two tokenizers count different tokens, so per-token perplexities "
                  "are not directly comparable")
    width = max(30, (shutil.get_terminal_size((120, 20)).columns - 3) // 2)
    s = result.settings
    for g in result.generations:
        print(f"\nprompt {g.prompt!r} ({s['n']} samples each, seed {s['seed']}, temperature "
              f"{s['temperature']})")
        print(f"{'base':<{width}} | tuned")
        print("-" * width + "-+-" + "-" * width)
        for i, (b, t) in enumerate(zip(g.base, g.tuned)):
            if i:
                print(" " * width + " |")
            for line in _side_by_side((g.prompt + b).strip(), (g.prompt + t).strip(), width):
                print(line)
    return 0


# ---------------------------------------------------------------------------------------------
# diff

def cmd_diff(cfg: DiffConfig) -> int:
    from lmtune.analysis.diff import diff, plot_diff

    result = diff(cfg.base, cfg.tuned, trust_remote_code=cfg.trust_remote_code,
                  allow_pickle=cfg.allow_pickle)
    if cfg.plot:
        plot_diff(result, cfg.plot)
    if cfg.json:
        _print_json(result.to_dict())
        return 0
    how = "from the LoRA adapter, not merged" if result.kind == "lora" else "weights compared"
    print(f"base:  {result.base}\ntuned: {result.tuned} ({how})")
    print(f"{len(result.changed)} of {len(result.tensors)} tensors changed")
    header = (f"{'relative':>10} {'mean|dW|':>10} {'max|dW|':>10} {'std dW':>10} "
              f"{'cosine':>10} {'row dist':>10}")

    def cells(m: dict) -> str:
        return (f"{_g(m['relative_change']):>10} {_g(m['mean_abs_diff']):>10} "
                f"{_g(m['max_abs_diff']):>10} {_g(m['std_diff']):>10} "
                f"{m['mean_cosine']:>10.6f} {_g(m['mean_euclidean']):>10}")
    if result.blocks:
        print(f"\n{'block':>5} {header}")
        for b in result.blocks:
            print(f"{b['block']:>5} {cells(b)}")
    shown = result.tensors if cfg.top == 0 else result.tensors[:cfg.top]
    name_w = max([6] + [len(t["name"]) for t in shown])
    print(f"\n{'tensor':<{name_w}} {header}")
    for t in shown:
        print(f"{t['name']:<{name_w}} {cells(t)}")
    if len(shown) < len(result.tensors):
        print(f"... {len(result.tensors) - len(shown)} more (--top 0 lists all, --json gives "
              f"every figure)")
    if cfg.plot:
        print(f"\nplot: {cfg.plot}")
    return 0


# ---------------------------------------------------------------------------------------------
# report

def cmd_report(cfg: ReportConfig) -> int:
    from lmtune.errors import UserError
    from lmtune.analysis.report import write_report

    if not cfg.run:
        raise UserError("name the run folder", hint="lmtune report RUN")
    result = write_report(cfg.run, compare=cfg.compare, device=cfg.device,
                          trust_remote_code=cfg.trust_remote_code,
                          allow_pickle=cfg.allow_pickle)
    print(f"loss curves: {result.loss_png}")
    print(f"report:      {result.html}")
    return 0

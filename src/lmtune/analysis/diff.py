"""`lmtune diff`: how far fine-tuning moved each weight tensor and each transformer block.

For every tensor W (base) and dW (tuned - base): mean and max |dW|, the standard deviation
of dW, the mean cosine similarity and mean Euclidean distance between matching rows of W
and W + dW (rows = the tensor's first dimension as stored), and ||dW|| / ||W||. A block's
figures pool all its tensors' elements and rows.

A LoRA run is measured without merging: each adapted layer's dW comes from PEFT's own
`get_delta_weight` (B @ A x scaling, transposed for GPT-2's Conv1D), one layer at a time, so
memory holds the base model plus one layer's dW. Full and freeze runs load both models.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import torch

from lmtune.analysis.compare import pair_specs
from lmtune.atomic import write_file
from lmtune.errors import UserError
from lmtune.models.load import attach_adapter, load_base
from lmtune.models.resolve import resolve
from lmtune.progress import iterate

METRICS = ("mean_abs_diff", "max_abs_diff", "std_diff", "mean_cosine", "mean_euclidean",
           "relative_change")
_BLOCK = re.compile(r"\.(?:h|layers|layer|blocks|block)\.(\d+)\.")


def block_of(name: str) -> tuple[int | None, str]:
    """(block index, name inside the block) for `transformer.h.3.attn.c_attn.weight`."""
    m = _BLOCK.search(name)
    return (int(m.group(1)), name[m.end():]) if m else (None, name)


class _Sums:
    """Running sums from which every metric of a tensor or a group of tensors follows."""

    def __init__(self):
        self.n = self.rows = 0
        self.abs_sum = self.sum = self.sq_sum = self.max_abs = 0.0
        self.cos_sum = self.dist_sum = self.w_sq = 0.0

    def add(self, w: torch.Tensor, d: torch.Tensor | None) -> None:
        """`d` None means unchanged (skips the arithmetic for frozen tensors)."""
        f64 = torch.float64
        w2 = w.reshape(w.shape[0], -1) if w.dim() > 1 else w.reshape(1, -1)  # (rows, cols)
        w_norm = w2.norm(dim=1)  # (rows,)
        self.n += w2.numel()
        self.rows += w2.shape[0]
        self.w_sq += float(w_norm.square().sum(dtype=f64))
        if d is None:
            self.cos_sum += w2.shape[0]
            return
        d2 = d.reshape(w2.shape)
        t2 = w2 + d2
        d_norm, t_norm = d2.norm(dim=1), t2.norm(dim=1)
        cos = (w2 * t2).sum(dim=1) / (w_norm * t_norm).clamp_min(1e-30)
        cos = torch.where(d_norm == 0, torch.ones_like(cos), cos.clamp(-1, 1))
        self.abs_sum += float(d2.abs().sum(dtype=f64))
        self.sum += float(d2.sum(dtype=f64))
        self.sq_sum += float(d2.square().sum(dtype=f64))
        self.max_abs = max(self.max_abs, float(d2.abs().max()))
        self.cos_sum += float(cos.sum(dtype=f64))
        self.dist_sum += float(d_norm.sum(dtype=f64))

    def metrics(self) -> dict:
        n, rows = max(1, self.n), max(1, self.rows)
        mean = self.sum / n
        d_norm = math.sqrt(self.sq_sum)
        w_norm = math.sqrt(self.w_sq)
        return {"mean_abs_diff": self.abs_sum / n, "max_abs_diff": self.max_abs,
                "std_diff": math.sqrt(max(0.0, self.sq_sum / n - mean * mean)),
                "mean_cosine": self.cos_sum / rows, "mean_euclidean": self.dist_sum / rows,
                "relative_change": d_norm / w_norm if w_norm else (math.inf if d_norm else 0.0)}


@dataclass
class DiffResult:
    base: str
    tuned: str
    kind: str                  # "lora" (from the adapter) or "weights" (two full models)
    tensors: list[dict] = field(default_factory=list)   # sorted by relative change, largest first
    blocks: list[dict] = field(default_factory=list)    # by block index

    @property
    def changed(self) -> list[str]:
        return [t["name"] for t in self.tensors if t["max_abs_diff"] > 0]

    def to_dict(self) -> dict:
        return asdict(self) | {"changed_tensors": len(self.changed),
                               "total_tensors": len(self.tensors)}


# ---------------------------------------------------------------------------------------------
# (name, base tensor, a function giving dW or None), one tensor at a time.

def _lora_pairs(tuned_resolved, base_params: dict | None, trust_remote_code: bool,
                allow_pickle: bool):
    from peft.tuners.lora import LoraLayer
    from peft.utils import ModulesToSaveWrapper

    model = load_base(tuned_resolved, dtype=torch.float32, trust_remote_code=trust_remote_code,
                      allow_pickle=allow_pickle)
    own = dict(model.named_parameters())  # canonical names; PEFT keeps these Parameter objects
    peft_model = attach_adapter(model, tuned_resolved.adapter, allow_pickle=allow_pickle).eval()
    adapter = peft_model.active_adapter
    tuned: dict[str, Callable] = {}
    for name, module in peft_model.base_model.model.named_modules():
        if isinstance(module, LoraLayer) and hasattr(module, "get_delta_weight"):
            if module.use_dora.get(adapter):
                raise UserError(f"{tuned_resolved.spec} is a DoRA adapter; diff it after "
                                f"merging", hint=f"lmtune merge {tuned_resolved.spec} --out DIR")
            tuned[name + ".weight"] = (lambda m=module: m.get_delta_weight(adapter))
        elif isinstance(module, ModulesToSaveWrapper):
            for sub, p in module.modules_to_save[adapter].named_parameters():
                tuned[f"{name}.{sub}"] = (lambda p=p, key=f"{name}.{sub}": p - own[key])
        elif type(module).__name__ == "TrainableTokensWrapper" \
                and not module.token_adapter.tied_adapter:  # a tied head's rows: the embedding's
            tuned[name + ".weight"] = (lambda m=module.token_adapter, key=name + ".weight":
                                       _token_rows_delta(m, adapter, own[key]))
    base = own if base_params is None else base_params
    for name, w in base.items():
        if name not in own or own[name].shape != w.shape:
            raise UserError(f"the models do not have the same weights: '{name}' differs",
                            hint="diff a run against the base it was trained from")
        offset = None if base_params is None else own[name]
        delta = tuned.get(name)

        def dw(delta=delta, offset=offset, w=w):
            d = delta() if delta else None
            if offset is not None:  # the adapter sits on another model than BASE
                d = (offset - w) + (d if d is not None else 0)
            return d
        yield name, w, dw


def _token_rows_delta(layer, adapter: str, w: torch.Tensor) -> torch.Tensor:
    """dW of the rows PEFT's trainable tokens (an extended run's new rows) replace; zero
    elsewhere."""
    d = torch.zeros_like(w)
    index = torch.tensor(layer.token_indices[adapter])
    d[index] = layer.trainable_tokens_delta[adapter].detach().to(w.dtype) - w[index]
    return d


def _weight_pairs(base_params: dict, tuned_params: dict):
    missing = sorted(set(base_params) ^ set(tuned_params))
    if missing:
        raise UserError(f"the models do not have the same weights (e.g. '{missing[0]}')",
                        hint="diff a run against the base it was trained from")
    for name, w in base_params.items():
        t = tuned_params[name]
        if t.shape != w.shape:
            raise UserError(f"'{name}' has shape {tuple(w.shape)} in the base and "
                            f"{tuple(t.shape)} in the tuned model")
        yield name, w, (lambda t=t, w=w: t - w)


@torch.no_grad()
def diff(base: str, tuned: str | None = None, *, trust_remote_code: bool = False,
         allow_pickle: bool = False) -> DiffResult:
    base, tuned = pair_specs(base, tuned)
    base_res, tuned_res = resolve(base), resolve(tuned)
    for r in (base_res, tuned_res):
        if (r.info or {}).get("task") == "classify":
            raise UserError(f"{r.spec} is a classification run; diff compares language models",
                            hint="compare the classifier's body by merging it first")
    if base_res.adapter is not None:
        raise UserError(f"the base {base} is a LoRA adapter",
                        hint=f"merge it first (lmtune merge {base} --out DIR) and diff against "
                             f"the merged folder")
    load = lambda r: dict(load_base(r, dtype=torch.float32,  # noqa: E731
                                    trust_remote_code=trust_remote_code,
                                    allow_pickle=allow_pickle).named_parameters())
    if tuned_res.adapter is not None:
        same = Path(base_res.path).resolve() == Path(tuned_res.path).resolve() \
            if Path(base_res.path).exists() else base_res.path == tuned_res.path
        pairs = _lora_pairs(tuned_res, None if same else load(base_res), trust_remote_code,
                            allow_pickle)
        kind = "lora"
    else:
        pairs = _weight_pairs(load(base_res), load(tuned_res))
        kind = "weights"
    result = DiffResult(base=base, tuned=tuned, kind=kind)
    blocks: dict[int, _Sums] = {}
    for name, w, dw in iterate(pairs, "comparing weights", unit="tensor"):
        d = dw()
        if d is not None and not torch.any(d):
            d = None
        one = _Sums()
        one.add(w, d)
        index, _ = block_of(name)
        if index is not None:
            blocks.setdefault(index, _Sums()).add(w, d)
        result.tensors.append({"name": name, "block": index, "shape": list(w.shape),
                               **one.metrics()})
    result.tensors.sort(key=lambda t: (-t["relative_change"], t["name"]))
    result.blocks = [{"block": i, **blocks[i].metrics()} for i in sorted(blocks)]
    return result


# ---------------------------------------------------------------------------------------------
# The picture: where the change is.

def plot_diff(result: DiffResult, path: str | Path) -> Path:
    """Relative change per block (bars) over a heat map of tensor kind x block."""
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    if not result.blocks:
        raise UserError("--plot: no transformer blocks found in these models")
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise UserError(f"--plot {path}: the plot is written as PNG", hint="use a .png name")
    n_blocks = max(b["block"] for b in result.blocks) + 1
    kinds = sorted({block_of(t["name"])[1] for t in result.tensors if t["block"] is not None})
    grid = np.zeros((len(kinds), n_blocks))
    for t in result.tensors:
        index, kind = block_of(t["name"])
        if index is not None:
            grid[kinds.index(kind), index] = t["relative_change"]
    fig = Figure(figsize=(max(6.0, 0.32 * n_blocks + 3), 2.6 + 0.28 * len(kinds)),
                 layout="constrained")
    FigureCanvasAgg(fig)
    top, bottom = fig.subplots(2, 1, sharex=True,
                               gridspec_kw={"height_ratios": [1, max(1.0, len(kinds) / 4)]})
    top.bar([b["block"] for b in result.blocks], [b["relative_change"] for b in result.blocks],
            color="#3b6ea5")
    top.set_ylabel("||dW|| / ||W||")
    top.set_title(f"Weight change by block: {Path(result.tuned).name or result.tuned} vs "
                  f"{Path(result.base).name or result.base}", fontsize=10)
    image = bottom.imshow(grid, aspect="auto", cmap="magma", interpolation="nearest",
                          extent=(-0.5, n_blocks - 0.5, len(kinds) - 0.5, -0.5))
    bottom.set_yticks(range(len(kinds)), kinds, fontsize=7)
    bottom.set_xlabel("block")
    bottom.xaxis.set_major_locator(MaxNLocator(integer=True))
    # One colour bar beside both plots keeps their widths, and so the block columns, aligned.
    fig.colorbar(image, ax=[top, bottom], label="relative change per tensor", shrink=0.6)
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_file(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))

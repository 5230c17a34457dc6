"""The optimizer, the learning-rate schedule and gradient clipping a run trains with (train.py
builds the first two before the loop; resuming replays the schedule up to the checkpoint's
step)."""

from __future__ import annotations

import math

import torch


def adamw(model, cfg, device: str):
    """AdamW over the trainable parameters; biases and norms (1-D) take no weight decay."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.dim() >= 2 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    groups = [g for g in groups if g["params"]]
    # Fused AdamW (one kernel over all tensors) on CUDA and CPU: on this 2-core CPU it stepped
    # 29M parameters in 13 ms against 56 ms for foreach. Other devices take foreach.
    if device in ("cuda", "cpu"):
        try:
            return torch.optim.AdamW(groups, lr=cfg.lr, fused=True)
        except (RuntimeError, TypeError, ValueError):
            pass
    return torch.optim.AdamW(groups, lr=cfg.lr, foreach=True)


def lr_factor(i: int, cfg, total_steps: int) -> float:
    """The learning rate of step i + 1 (i steps done), as a share of the peak: linear warmup,
    then cosine, linear or constant. The warmup ramps as (i + 1) / (warmup + 1), as in nanoGPT:
    the transformers schedulers start at 0, which wasted the first step and left a one-step
    run's weights untouched. A pure function of the step: resuming replays it."""
    warmup, kind = cfg.warmup_steps, cfg.lr_schedule
    if i < warmup:
        return (i + 1) / (warmup + 1)
    if kind == "constant":
        return 1.0
    progress = min(1.0, (i - warmup) / max(1, total_steps - warmup))
    return 0.5 * (1 + math.cos(math.pi * progress)) if kind == "cosine" else 1 - progress


def lr_schedule(optimizer, cfg, total_steps: int):
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda i: lr_factor(i, cfg, total_steps))


def schedule_change(cfg, step: int, old_total: int, new_total: int) -> str | None:
    """What resuming at `step` with a new length does to a decaying schedule, in words: the
    schedule spans the run's planned steps, so more of them raise the rate from here on."""
    if old_total == new_total or cfg.lr_schedule == "constant" or step <= cfg.warmup_steps:
        return None
    was, now = (cfg.lr * lr_factor(step, cfg, n) for n in (old_total, new_total))
    return (f"the {cfg.lr_schedule} learning-rate schedule now spans {new_total} steps instead "
            f"of {old_total}: the rate at step {step + 1} is {now:.3g} where the run had "
            f"reached {was:.3g} (see 'Resuming and extending a run' in docs/RELIABILITY.md)")


def clip_gradients(accelerator, params, max_norm: float, sharded: bool = False,
                   optimizer=None) -> float:
    """The total gradient norm (a float: the step's one host sync), after clipping to
    `max_norm`. torch's clip_grad_norm_ multiplies every gradient by min(1, max/norm) to avoid
    a sync; we sync anyway for the finiteness check, so gradients are touched only when they
    are clipped (the multiply was 3% of a small GPT-2 step), and not even then when
    `optimizer` is fused AdamW: it takes the factor into its own pass (`fold_clip`). FSDP and
    other engines that shard gradients (--fsdp) keep accelerate's own clipping."""
    from accelerate.utils import DistributedType
    if sharded or accelerator.distributed_type not in (
            DistributedType.NO, DistributedType.MULTI_CPU, DistributedType.MULTI_GPU):
        norm = accelerator.clip_grad_norm_(params, max_norm)
        if hasattr(norm, "full_tensor"):  # FSDP2: a DTensor of the global norm
            norm = norm.full_tensor()
        return float(norm)
    accelerator.unscale_gradients()  # fp16's loss scale; nothing otherwise
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return 0.0
    norm = float(torch.nn.utils.get_total_norm(grads, foreach=True))
    if math.isfinite(norm) and norm > max_norm:
        coef = max_norm / (norm + 1e-6)  # torch's clip coefficient
        if not fold_clip(accelerator, optimizer, coef, grads[0].device):
            torch._foreach_mul_(grads, coef)
    return norm


def fold_clip(accelerator, optimizer, coef: float, device) -> bool:
    """Hand the clip factor to fused AdamW, which divides each gradient by its `grad_scale` in
    the one pass it makes over them anyway (the attribute GradScaler sets for fp16), instead of
    a pass of its own; the update equals the multiplied one within rounding (4e-9 on 1e-2
    steps). Not under fp16's loss scaling, which owns grad_scale. `unfold_clip` after the
    step. Whether it applied."""
    inner = getattr(optimizer, "optimizer", optimizer)  # accelerate's AcceleratedOptimizer
    if (inner is None or not inner.defaults.get("fused") or
            getattr(accelerator, "scaler", None) is not None):
        return False
    inner.grad_scale = torch.tensor(1.0 / coef, dtype=torch.float32, device=device)
    return True


def unfold_clip(optimizer) -> None:
    inner = getattr(optimizer, "optimizer", optimizer)
    if hasattr(inner, "grad_scale"):
        del inner.grad_scale

"""The Python API: the same functions the CLI calls, returning values and printing nothing."""

from __future__ import annotations

from typing import Callable

from lmtune import config as config_mod
from lmtune.config import GenerateConfig
from lmtune.generate import Sample, generate as _generate
from lmtune.merge import MergeResult, merge as _merge
from lmtune.train import TrainResult, train as _train


def train(data: str | None = None, *, config_file: str | None = None,
          on_event: Callable[[str, dict], None] | None = None, **options) -> TrainResult:
    """Fine-tune; `options` are the `lmtune train` flags with underscores (see TrainConfig)."""
    if data is not None:
        options["data"] = str(data)
    return _train(config_file=config_file, on_event=on_event, **options)


def load(model: str | None = None, *, device: str = "auto", precision: str = "fp32",
         trust_remote_code: bool = False):
    """(model, tokenizer) for a run folder, checkpoint, model folder, hub id or the default."""
    from lmtune.models import load as _load
    from lmtune.runtime import pick_device, pick_precision, torch_dtype

    dev = pick_device(device)
    dtype = torch_dtype(pick_precision(precision, dev))
    m, tok, _ = _load(None if model is None else str(model), dtype=dtype,
                      trust_remote_code=trust_remote_code)
    return m.to(dev), tok


def generate(model=None, prompts: list[str] | str | None = None, **options) -> list[Sample]:
    """Samples from `model` (a path/name, or a `(model, tokenizer)` pair from `load`)."""
    if isinstance(prompts, str):
        prompts = [prompts]
    if isinstance(model, tuple):
        m, tok = model
        spec = None
    else:
        spec = None if model is None else str(model)
        m = tok = None
    opts = dict(options, prompts=list(prompts or []))
    if spec:
        opts["model"] = spec
    cfg = config_mod.build(GenerateConfig, opts)
    if m is None:
        m, tok = load(cfg.model, device=cfg.device, precision="fp32",
                      trust_remote_code=cfg.trust_remote_code)
    return run_generate(cfg, m, tok)


def run_generate(cfg: GenerateConfig, model, tokenizer) -> list[Sample]:
    import torch
    from lmtune.runtime import pick_precision, torch_dtype

    device = next(model.parameters()).device
    precision = pick_precision(cfg.precision, device.type)
    use_amp = precision != "fp32"
    with torch.autocast(device.type, dtype=torch_dtype(precision), enabled=use_amp):
        return _generate(model, tokenizer, cfg.prompts, n=cfg.n,
                         max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature,
                         top_k=cfg.top_k, top_p=cfg.top_p,
                         repetition_penalty=cfg.repetition_penalty, seed=cfg.seed,
                         stop=cfg.stop, chat=cfg.chat)


def merge(run: str, out: str, *, trust_remote_code: bool = False) -> MergeResult:
    """Merge a LoRA run into its base and save a standalone model in `out`."""
    return _merge(str(run), str(out), trust_remote_code=trust_remote_code)

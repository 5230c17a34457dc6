"""Full, freeze and LoRA differ only in which parameters train; the loop is shared.

A method is an object with three steps that training/setup.py calls in order: `apply` (which
weights train: LoRA wraps the model in a PEFT model, the others set requires_grad in place),
`restore` (a checkpoint's weights back into the applied model, on --resume) and `for_precision`
(what the method does under bf16/fp16 autocast). `METHODS` maps --method to them.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from lmtune.config.defaults import default_lora_targets
from lmtune.errors import UserError
from lmtune.models.load import num_layers

# GPT-2 uses Conv1D layers whose weight is stored transposed (in x out): fan_in_fan_out for
# PEFT.
FAN_IN_FAN_OUT = {"gpt2"}


def apply_lora(model, *, r: int, alpha: int, dropout: float, targets: list[str] | None,
               classify: bool = False, new_rows: list[int] | None = None):
    """With `classify`, the label head is new (randomly initialised), so it trains whole:
    PEFT's `modules_to_save` keeps a trainable copy and saves it with the adapter. `new_rows`:
    token ids a tokenizer extension added (train --extend-tokenizer), whose embedding rows
    train too (new_token_rows)."""
    from peft import LoraConfig, get_peft_model

    model_type = model.config.model_type
    target_modules = targets or default_lora_targets(model_type)
    extra = (dict(task_type="SEQ_CLS", modules_to_save=[classifier_head_name(model)])
             if classify else dict(task_type="CAUSAL_LM"))
    if new_rows:
        extra["trainable_token_indices"] = new_token_rows(model, new_rows)
    try:
        config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, bias="none",
                            target_modules=target_modules,
                            fan_in_fan_out=model_type in FAN_IN_FAN_OUT, **extra)
    except TypeError as e:  # an older PEFT: no trainable_token_indices
        raise UserError(f"this PEFT cannot train new embedding rows under LoRA ({e})",
                        hint="pip install -U 'peft>=0.15', or train with --method full") \
            from None
    try:
        return get_peft_model(model, config)
    except ValueError as e:
        if "not found" not in str(e) and "Target module" not in str(e):
            raise
        leaves = sorted({name.rsplit(".", 1)[-1] for name, m in model.named_modules()
                         if isinstance(m, nn.Linear) or type(m).__name__ == "Conv1D"})
        raise UserError(f"--lora-targets {' '.join(targets or [])}: no such modules in "
                        f"{model_type}", hint="modules that LoRA can adapt here: "
                        + ", ".join(leaves))


def new_token_rows(model, ids: list[int]) -> dict[str, list[int]]:
    """PEFT's trainable_token_indices for the new rows of the input embedding and, when it
    is untied, of the LM head (a tied head follows the embedding's rows in PEFT). The rest
    of the embedding stays frozen and is never saved with the adapter.

    Chosen over modules_to_save=[embedding, head], which trains, keeps AdamW moments for and
    saves whole copies of both matrices, old rows included. Measured on a 2-layer Llama with
    an untied head, 49,152 + 20,000 rows of 576 (SmolLM2's sizes), 8 x 64 tokens, fp32, busy
    2-core CPU: 23.1M trained weights against 79.7M, AdamW state 185 MB against 638 MB, peak
    RSS 1.78 GB against 2.40 GB, adapter file 92 MB against 319 MB, 3.7 s a step against 4.5 s.
    At 1,000 + 200 rows of 64 the steps took the same time (41 ms against 37 ms, noise).
    Either way the head is no plain Linear any more, so the loss takes the full-logits path
    rather than fast/chunked_ce.py.
    """
    leaf = {m: name.rsplit(".", 1)[-1] for name, m in model.named_modules()}
    emb, head = model.get_input_embeddings(), model.get_output_embeddings()
    rows = {leaf[emb]: list(ids)}
    if head is not None and head.weight is not emb.weight:
        rows[leaf[head]] = list(ids)
    return rows


def _blocks(model) -> nn.ModuleList:
    """The transformer blocks: the ModuleList whose length is the layer count."""
    n = num_layers(model)
    for _, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) == n:
            return module
    raise UserError(f"cannot find the transformer blocks of {model.config.model_type}",
                    hint="use --method lora or --method full")


def _final_norm(model) -> nn.Module | None:
    base = getattr(model, model.base_model_prefix, model)
    for name in ("ln_f", "norm", "final_layer_norm", "final_layernorm"):
        if isinstance(getattr(base, name, None), nn.Module):
            return getattr(base, name)
    return None


def apply_freeze(model, train_layers: int):
    n = num_layers(model)
    if not 1 <= train_layers <= n:
        raise UserError(f"--train-layers {train_layers} is outside 1..{n} "
                        f"({model.config.model_type} has {n} blocks)")
    model.requires_grad_(False)
    for block in list(_blocks(model))[n - train_layers:]:
        block.requires_grad_(True)
    norm = _final_norm(model)
    if norm is not None:
        norm.requires_grad_(True)
    # The LM head is often tied to the input embeddings (GPT-2, SmolLM2): training it trains
    # that shared matrix too, which is what the head-and-top-blocks recipe does anyway.
    # A classifier has no LM head; its label head trains instead.
    head = model.get_output_embeddings()
    if head is None:
        head = getattr(model, classifier_head_name(model))
    head.requires_grad_(True)
    return model


def classifier_head_name(model) -> str:
    """The label head of an AutoModelForSequenceClassification: `score` in the decoder
    families (GPT-2, GPT-Neo, GPT-J, NeoX, Llama-family), `classifier` in a few others."""
    for name in ("score", "classifier"):
        if isinstance(getattr(model, name, None), nn.Module):
            return name
    raise UserError(f"cannot find the classification head of {model.config.model_type}")


def store_frozen_in(model, dtype: torch.dtype) -> None:
    """Keep the frozen weights in the autocast dtype. Under bf16 autocast every linear layer
    otherwise copies its fp32 weight to bf16 on each forward and backward (a fifth of a
    SmolLM2 LoRA step on CPU went to those copies), and the base takes half the memory.
    Trainable weights stay fp32: they are the optimizer's master copy. Only for LoRA, whose
    saved artifact holds just the adapter, so no frozen weight is ever written rounded."""
    for p in model.parameters():
        if not p.requires_grad and p.dtype == torch.float32:
            p.data = p.data.to(dtype)


def keep_lora_inputs_in_autocast_dtype(model) -> None:
    """PEFT casts each LoRA layer's input to the adapter's dtype (fp32, the master copy), and
    autocast casts it straight back to bf16 for the matmul: four activation copies per adapted
    layer per step, 5% of a SmolLM2 LoRA step on CPU. Under autocast the cast buys nothing
    (the matmul runs in bf16 either way), so it is switched off; this is the flag behind
    peft.helpers.disable_input_dtype_casting. Only for training under bf16/fp16 autocast."""
    for module in model.modules():
        if hasattr(module, "cast_input_dtype_enabled"):
            module.cast_input_dtype_enabled = False


# trainable_tokens_: the new embedding rows of an extended run (new_token_rows), copies of rows
# the model already counts
ADDED_BY_LORA = ("lora_", "modules_to_save.", "trainable_tokens_")


def count_parameters(model) -> tuple[int, int]:
    """(trainable, the model's own): the second leaves out what LoRA added (its adapter
    matrices and the trained copies of modules_to_save), so every command names one size
    for a model, the one `data inspect` shows. Tied weights appear once in parameters()."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for name, p in model.named_parameters()
                if not any(part in name for part in ADDED_BY_LORA))
    return trainable, total


def load_weights(model, folder: Path) -> None:
    """A full or freeze run's checkpoint weights into the model. Refused when some are missing
    or do not fit, rather than training on from base weights."""
    from safetensors.torch import load_file

    missing = {n for n, _ in model.named_parameters()}
    for f in sorted(folder.glob("*.safetensors")):
        sd = load_file(f)
        try:
            model.load_state_dict(sd, strict=False)
        except RuntimeError as e:  # shapes differ: --force-resume onto another base model
            raise UserError(f"checkpoint weights in {f} do not fit the model "
                            f"({str(e).splitlines()[-1].strip()})",
                            hint="resume with the run's own --model") from None
        missing -= set(sd)
    head = model.get_output_embeddings()  # None for a classifier: it has a label head
    tied = {n for n, p in model.named_parameters() if head is not None and p is head.weight}
    if missing - tied:
        raise UserError(f"checkpoint {folder} lacks weights: {sorted(missing - tied)[:3]}")


# ---------------------------------------------------------------------------------------------
# The methods.

class Full:
    """Every weight trains."""

    name = "full"

    def apply(self, model, cfg, new_rows: list[int] | None = None):
        model.requires_grad_(True)
        return model

    def restore(self, model, folder: Path) -> None:
        load_weights(model, folder)

    def for_precision(self, model, dtype: torch.dtype | None) -> None:
        """Every weight stays fp32, the optimizer's master copy; autocast does the rest."""


class Freeze(Full):
    """Only the top --train-layers blocks, the final norm and the head train."""

    name = "freeze"

    def apply(self, model, cfg, new_rows: list[int] | None = None):
        model = apply_freeze(model, cfg.train_layers)
        if new_rows:  # the new rows start as averages: the input side must learn them too
            model.get_input_embeddings().requires_grad_(True)
        return model


class Lora:
    """A PEFT LoRA adapter trains; the base stays as it is."""

    name = "lora"

    def apply(self, model, cfg, new_rows: list[int] | None = None):
        return apply_lora(model, r=cfg.lora_r, alpha=cfg.lora_alpha, dropout=cfg.lora_dropout,
                          targets=cfg.lora_targets, classify=cfg.task == "classify",
                          new_rows=new_rows)

    def restore(self, model, folder: Path) -> None:
        from peft import set_peft_model_state_dict
        from safetensors.torch import load_file

        set_peft_model_state_dict(model, load_file(folder / "adapter_model.safetensors"))

    def for_precision(self, model, dtype: torch.dtype | None) -> None:
        """Under bf16/fp16 autocast the frozen base is kept in that dtype, and PEFT's input
        casts are switched off (see the two functions)."""
        if dtype is not None:
            store_frozen_in(model, dtype)
            keep_lora_inputs_in_autocast_dtype(model)


METHODS = {m.name: m for m in (Lora(), Full(), Freeze())}


class EmbeddingWarmup:
    """--warmup-embeddings N: for the first N optimizer steps only the embedding and the LM
    head (of what the method trains: with LoRA the new rows) are updated. The others' gradients
    are dropped before clipping and the update, so AdamW neither moves nor decays them and
    their moments start only after the warmup; the backward still computes them, which keeps
    DDP's gradient reduction the same on every step."""

    def __init__(self, model, params: list, steps: int):
        emb, head = model.get_input_embeddings(), model.get_output_embeddings()
        mine = {id(p) for m in (emb, head) if m is not None for p in m.parameters()}
        self.steps = steps
        self.held = [p for p in params if id(p) not in mine]
        if steps and len(self.held) == len(params):
            raise UserError(f"--warmup-embeddings {steps}: no embedding weight trains with "
                            f"this method", hint="drop --warmup-embeddings, or add "
                                                 "--extend-tokenizer with --method lora")

    def hold(self, step: int | None) -> None:
        """Before the update of step `step` (0-based; None: a step after the warmup)."""
        if step is not None and step < self.steps:
            for p in self.held:
                p.grad = None


"""Generation: every prompt and every sample in one left-padded batch."""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from lmtune.data.tokenize import start_token_id
from lmtune.errors import UserError
from lmtune.fast.head_matmul import decoding_head
from lmtune.models.chat import render_chat
from lmtune.models.resolve import resolve
from lmtune.progress import stage


@dataclass
class Sample:
    prompt: str
    text: str            # the generated continuation only
    finish_reason: str   # "stop": ended by EOS or a stop string; "length": hit max_new_tokens
    new_tokens: int

    def to_dict(self) -> dict:
        return asdict(self)


def encode_prompt(tokenizer, prompt: str, chat: bool = False) -> list[int]:
    if chat:
        if not getattr(tokenizer, "chat_template", None):
            raise UserError("--chat: this model's tokenizer has no chat template",
                            hint="drop --chat to use the prompt as plain text")
        text = render_chat(tokenizer, [{"role": "user", "content": prompt}])
        # The template writes any start token itself, so no special tokens are added here.
        return tokenizer(text, add_special_tokens=False)["input_ids"]
    # Training put the start token before every example, so a prompt is read after it too.
    return [start_token_id(tokenizer)] + tokenizer(prompt, add_special_tokens=False)["input_ids"]


def left_pad(rows: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, attention mask), both (len(rows), longest): prompts end at the same column, so
    every row's next token is generated at the last position (serving shares this)."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, width - len(r):] = torch.tensor(r, dtype=torch.long)
        mask[i, width - len(r):] = 1
    return ids, mask


def _cut_at_stop(text: str, stops: list[str]) -> tuple[str, bool]:
    cuts = [text.find(s) for s in stops if s and s in text]
    return (text[:min(cuts)], True) if cuts else (text, False)


class _Ticks:
    """A stopping criterion that never stops: transformers calls it once per new token, which
    is where a long generation reports its progress."""

    def __init__(self, progress):
        self.progress = progress

    def __call__(self, input_ids, scores, **kwargs) -> torch.Tensor:
        self.progress.advance()
        return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)


@torch.no_grad()
def generate(model, tokenizer, prompts: list[str] | None = None, *, n: int = 1,
             max_new_tokens: int = 100, temperature: float = 0.8, top_k: int = 50,
             top_p: float = 0.95, repetition_penalty: float = 1.0, seed: int | None = None,
             stop: list[str] | None = None, chat: bool = False,
             synced: bool = False) -> list[Sample]:
    """`n` samples for each prompt (an empty prompt list means one unconditional prompt).
    `synced`: every rank of an FSDP model calls this, and each keeps running forward passes
    until all are done (a rank that stopped early would leave the others waiting)."""
    from transformers import GenerationConfig

    if n < 1 or max_new_tokens < 1:
        raise UserError("-n and --max-new-tokens must be at least 1")
    if temperature < 0 or not 0 < top_p <= 1:
        raise UserError("--temperature must be >= 0 and --top-p in (0, 1]")
    prompts = list(prompts) if prompts else [""]
    stop = [s for s in (stop or []) if s]
    rows = [encode_prompt(tokenizer, p, chat) for p in prompts for _ in range(n)]
    device = next(model.parameters()).device
    ids, mask = left_pad(rows, tokenizer.pad_token_id)
    greedy = temperature == 0
    gen_config = GenerationConfig(
        max_new_tokens=max_new_tokens, do_sample=not greedy,
        temperature=None if greedy else temperature, top_k=None if greedy else (top_k or None),
        top_p=None if greedy else top_p, repetition_penalty=repetition_penalty,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        stop_strings=stop or None)
    was_training = model.training
    model.eval()
    # Sampling must not disturb the training RNG (dropout, resume equality), so it runs on a
    # forked RNG; a seed makes the samples themselves reproducible.
    # The CPU's fast decoding head (fast/head_matmul.py); FSDP's sharded head is left alone.
    head = nullcontext() if synced else decoding_head(model)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), head, \
            stage(f"generating {len(rows)} sample{'s' if len(rows) > 1 else ''}",
                  max_new_tokens, "token") as progress:
        if seed is not None:
            torch.manual_seed(seed)
        out = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device),
                             generation_config=gen_config,
                             tokenizer=tokenizer if stop else None,
                             stopping_criteria=[_Ticks(progress)],
                             **({"synced_gpus": True} if synced else {}))
    model.train(was_training)
    new = out[:, ids.shape[1]:].cpu()
    samples = []
    for i, row in enumerate(new.tolist()):
        ended = tokenizer.eos_token_id in row
        if ended:
            row = row[:row.index(tokenizer.eos_token_id)]
        text, stopped = _cut_at_stop(tokenizer.decode(row, skip_special_tokens=True), stop)
        samples.append(Sample(prompt=prompts[i // n], text=text,
                              finish_reason="stop" if ended or stopped else "length",
                              new_tokens=len(row)))
    return samples


def generate_from_config(cfg, model, tokenizer) -> list[Sample]:
    """`lmtune generate`'s samples (`cfg` a GenerateConfig) from a loaded model: weights stay
    as loaded, and bf16/fp16 run under autocast, as in training."""
    from lmtune.device import pick_precision, torch_dtype

    device = next(model.parameters()).device
    precision = pick_precision(cfg.precision, device.type)
    use_amp = precision != "fp32"
    with torch.autocast(device.type, dtype=torch_dtype(precision), enabled=use_amp):
        return generate(model, tokenizer, cfg.prompts, n=cfg.n,
                        max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature,
                        top_k=cfg.top_k, top_p=cfg.top_p,
                        repetition_penalty=cfg.repetition_penalty, seed=cfg.seed,
                        stop=cfg.stop, chat=cfg.chat or is_chat_run(cfg.model))


def is_chat_run(spec) -> bool:
    """A run trained on conversations: its prompts are questions, asked in its chat format."""
    if not spec or not Path(str(spec)).exists():
        return False
    return ((resolve(str(spec)).info or {}).get("format")) == "chat"

"""Fold a LoRA adapter into its base weights and save a standalone model."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from lmtune.atomic import new_folder, refuse_filled_folder
from lmtune.errors import UserError
from lmtune.models.generate import encode_prompt
from lmtune.models.load import attach_adapter, load_base, load_tokenizer
from lmtune.models.resolve import refuse_classifier, resolve
from lmtune.progress import stage
from lmtune.run.artifact import finish_artifact

MAX_LOGIT_DIFF = 1e-3
PROBE_TEXT = "The quick brown fox jumps over the lazy dog. 0123456789"


@dataclass
class MergeResult:
    out: Path
    max_logit_diff: float


@torch.no_grad()
def merge(run: str, out: str, *, trust_remote_code: bool = False,
          allow_pickle: bool = False) -> MergeResult:
    resolved = resolve(run)
    refuse_classifier(resolved)  # its adapter sits on a classification head, not this LM
    if resolved.adapter is None:
        raise UserError(f"{run} holds a full model, not a LoRA adapter; there is nothing to "
                        f"merge", hint="use it directly with --model")
    target = Path(out)
    refuse_filled_folder(target)
    tokenizer = load_tokenizer(resolved, trust_remote_code)
    # fp32 throughout: merging in bf16 would round the base weights and the check below
    # would measure the rounding, not the merge.
    base = load_base(resolved, dtype=torch.float32, trust_remote_code=trust_remote_code,
                     allow_pickle=allow_pickle)
    model = attach_adapter(base, resolved.adapter, allow_pickle=allow_pickle).eval()
    probe = torch.tensor([encode_prompt(tokenizer, PROBE_TEXT)])
    before = model(probe).logits
    merged = model.merge_and_unload(safe_merge=True)  # safe_merge refuses NaN weights
    diff = (merged(probe).logits - before).abs().max().item()
    if diff > MAX_LOGIT_DIFF:
        raise UserError(f"the merged model differs from the adapter by {diff:.2e} in logits "
                        f"(limit {MAX_LOGIT_DIFF})", hint="the adapter may be damaged; nothing "
                                                          "was written")
    info = dict(resolved.info or {})
    info.update(method="merged", merged_from=str(Path(run).resolve()))
    with new_folder(target) as tmp, stage(f"writing {target}"):  # an empty one is replaced
        merged.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        finish_artifact(tmp, info)
    return MergeResult(out=target, max_logit_diff=diff)

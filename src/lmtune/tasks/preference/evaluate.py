"""How well a model prefers the chosen answers of a preference file: what `lmtune eval MODEL
--data prefs.jsonl` reports when the data holds pairs (tasks/preference/data.py's formats).

    evaluate_preferences(spec, data, **options) -> dict

For any model (a base, a run, a checkpoint) the result has
    preference_accuracy  the share of pairs whose chosen answer the model finds more likely
                         than the rejected one (summed log-probabilities of the answer tokens)
    logp_chosen, logp_rejected   their means over the pairs
so a base and its tuned run can be compared on the same file. For a preference run it adds
the run's own loss and its rewards, measured as training measured them: against the base the
run names (DPO; with LoRA the adapter switched off) or without a reference (ORPO, SimPO):
    loss, reward_accuracy, reward_margin, rewards_chosen, rewards_rejected
The pairs are read as the run read its data when no flag says otherwise.
"""

from __future__ import annotations

import numpy as np
import torch

from lmtune.config.defaults import PREFERENCE_MAX_LENGTH
from lmtune.data.chat_tokens import use_chat_template
from lmtune.data.examples import split_indices
from lmtune.device import pick_device, pick_precision, torch_dtype
from lmtune.errors import UserError
from lmtune.models.load import context_length, load, load_tokenizer, peek_config
from lmtune.models.resolve import resolve
from lmtune.run.folder import RunFolder
from lmtune.tasks.preference.data import PairDataset, answer_tokens, read_pairs, tokenize_pairs
from lmtune.tasks.preference.losses import STATS, batch_stats, pair_losses
from lmtune.tasks.preference.reference import pair_logps

EVAL_PAIRS_PER_BATCH = 8


def evaluate_preferences(spec: str, data: str, *, prompt_template: str | None = None,
                         chosen_column: str | None = None, rejected_column: str | None = None,
                         format: str | None = None, encoding: str = "utf-8",
                         block_size: int | None = None, batch_size: int | None = None,
                         device: str = "auto", precision: str = "auto",
                         trust_remote_code: bool = False, allow_pickle: bool = False) -> dict:
    resolved = resolve(spec)
    info = resolved.info or {}
    run = RunFolder.containing(spec)
    saved = run.config() if run is not None else None
    own = saved if saved is not None and saved.task == "preference" else None
    trust = dict(trust_remote_code=trust_remote_code, allow_pickle=allow_pickle)
    tokenizer = load_tokenizer(resolved, trust_remote_code)
    pairs = read_pairs(str(data), fmt=format, encoding=encoding,
                       prompt_template=prompt_template or (own and own.prompt_template),
                       chosen_column=chosen_column or (own and own.chosen_column),
                       rejected_column=rejected_column or (own and own.rejected_column))
    if pairs[0].turns:
        use_chat_template(tokenizer)
    context = context_length(peek_config(resolved, trust_remote_code))
    max_length = block_size or (own and own.block_size) or min(PREFERENCE_MAX_LENGTH, context)
    dataset = pair_dataset(pairs, tokenizer, max_length, str(data))
    batch = batch_size or (own and own.batch_size) or EVAL_PAIRS_PER_BATCH
    dev = pick_device(device)
    prec = pick_precision(saved.precision if precision == "auto" and saved else precision, dev)
    autocast = None if prec == "fp32" else (lambda: torch.autocast(dev, dtype=torch_dtype(prec)))
    model, _, _ = load(spec, dtype=torch.float32, **trust)
    model.to(dev)
    sums, counts = pair_logps(model, dataset, batch, dev, autocast, "evaluating")
    result = {"task": "preference", "model": spec, "data": str(data), "pairs": len(dataset),
              "preference_accuracy": round(float((sums[:, 0] > sums[:, 1]).mean()), 4),
              "logp_chosen": round(float(sums[:, 0].mean()), 4),
              "logp_rejected": round(float(sums[:, 1].mean()), 4)}
    if info.get("task") != "preference":
        return result
    ref = None
    if info.get("loss", "dpo") == "dpo":
        ref = _reference(model, info["base_model"], dataset, batch, dev, autocast, trust)
    return {**result, **_rewards(info, sums, counts, ref)}


def held_out_pairs(cfg) -> tuple[list, str]:
    """A preference run's held-out pairs, read as the run read them: its validation file, else
    the validation split training made ((val_split, seed) over the file's pairs), else (no
    validation) its training pairs; and which of the three it is."""
    def read(path: str):
        return read_pairs(path, fmt=cfg.format, encoding=cfg.encoding,
                          prompt_template=cfg.prompt_template, chosen_column=cfg.chosen_column,
                          rejected_column=cfg.rejected_column)

    if cfg.val_data:
        return read(cfg.val_data), "validation file"
    pairs = read(cfg.data)
    _, val_idx = split_indices(len(pairs), cfg.val_split, cfg.seed)
    if len(val_idx):
        return [pairs[i] for i in val_idx], "validation split"
    return pairs, "training data"


def preference_scores(model, tokenizer, pairs: list, *, max_length: int, device,
                      autocast=None, batch_size: int = EVAL_PAIRS_PER_BATCH) -> dict:
    """How often `model` finds the chosen answer of `pairs` more likely than the rejected one,
    and its mean log-probability margin (chosen - rejected, summed over answer tokens)."""
    if pairs and pairs[0].turns:
        use_chat_template(tokenizer)
    dataset = pair_dataset(pairs, tokenizer, max_length, "the pairs")
    sums, _ = pair_logps(model, dataset, batch_size, device, autocast, "evaluating")
    return {"pairs": len(dataset),
            "accuracy": round(float((sums[:, 0] > sums[:, 1]).mean()), 4),
            "margin": round(float((sums[:, 0] - sums[:, 1]).mean()), 4)}


def pair_dataset(pairs, tokenizer, max_length: int, source: str) -> PairDataset:
    chosen, rejected = tokenize_pairs(pairs, tokenizer)
    kept = np.flatnonzero((answer_tokens(chosen, max_length) > 0)
                          & (answer_tokens(rejected, max_length) > 0))
    if not len(kept):
        raise UserError(f"every prompt of {source} fills the {max_length}-token limit, leaving "
                        f"no answer tokens", hint="raise --block-size")
    return PairDataset(chosen.subset(kept), rejected.subset(kept), max_length=max_length,
                       pad_id=tokenizer.pad_token_id, shuffle=False)


def _reference(model, base: str, dataset, batch: int, device, autocast, trust) -> np.ndarray:
    """The base's summed log-probabilities: a LoRA run's model with its adapter off, else the
    base model loaded after the run's is put away."""
    if hasattr(model, "disable_adapter"):
        with model.disable_adapter():
            return pair_logps(model, dataset, batch, device, autocast, "reference")[0]
    model.to("cpu")
    reference, _, _ = load(base, dtype=torch.float32, **trust)
    reference.to(device)
    return pair_logps(reference, dataset, batch, device, autocast, "reference")[0]


def _rewards(info: dict, sums: np.ndarray, counts: np.ndarray, ref: np.ndarray | None) -> dict:
    """The run's loss and rewards over every pair, as its training measured them."""
    def flat(a: np.ndarray) -> torch.Tensor:  # (pairs, 2) -> (2 pairs,): chosen first
        return torch.from_numpy(np.concatenate([a[:, 0], a[:, 1]]))

    losses, rewards_c, rewards_r = pair_losses(
        info.get("loss", "dpo"), info.get("beta", 0.1), info.get("gamma"), flat(sums),
        flat(counts), None if ref is None else flat(ref))
    stats = batch_stats(rewards_c, rewards_r, torch.ones(len(sums)))
    return {"loss_type": info.get("loss", "dpo"), "beta": info.get("beta"),
            **({"reference": info.get("base_model")} if ref is not None else {}),
            "loss": round(losses.mean().item(), 6),
            **{name: round(stats[name].item() / len(sums), 4) for name in STATS}}

"""`lmtune compare`: a base model and a fine-tuned one side by side.

Generations use the same prompts, settings and seed for both, so a difference comes from
the weights. Perplexity is measured on the target data (learning) and, with `--reference`,
on general text (forgetting), with the same packing as training.
"""

from __future__ import annotations

import dataclasses
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path

from lmtune.analysis.evaluate import (TEXT_OPTIONS, load_for_eval, loss_on_docs, packing_for,
                                      read_docs, run_config, run_precision,
                                      with_run_data_options)
from lmtune.config import CompareConfig
from lmtune.data.corpus import read_examples
from lmtune.errors import UserError
from lmtune.models.generate import generate
from lmtune.models.load import load_tokenizer
from lmtune.models.resolve import resolve
from lmtune.tasks.generate import perplexity


@dataclass
class PerplexityRow:
    data: str
    role: str               # "target" (--data) or "reference"
    base_loss: float
    tuned_loss: float
    base_tokens: int
    tuned_tokens: int

    @property
    def base_perplexity(self) -> float:
        return perplexity(self.base_loss)

    @property
    def tuned_perplexity(self) -> float:
        return perplexity(self.tuned_loss)

    def to_dict(self) -> dict:
        return dict(dataclasses.asdict(self), base_perplexity=self.base_perplexity,
                    tuned_perplexity=self.tuned_perplexity)


@dataclass
class GenerationRow:
    prompt: str
    base: list[str]
    tuned: list[str]


@dataclass
class CompareResult:
    base: str
    tuned: str
    perplexity: list[PerplexityRow] = field(default_factory=list)
    generations: list[GenerationRow] = field(default_factory=list)
    settings: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"base": self.base, "tuned": self.tuned,
                "perplexity": [r.to_dict() for r in self.perplexity],
                "generations": [dataclasses.asdict(g) for g in self.generations],
                "settings": self.settings}


# ---------------------------------------------------------------------------------------------
# Two models, loaded once.

def _same_folder(a: str, b: str) -> bool:
    pa, pb = Path(a), Path(b)
    return pa.resolve() == pb.resolve() if pa.exists() and pb.exists() else a == b


class ModelPair:
    """The base and the tuned model. A LoRA run compared with the very base it was trained
    on is loaded once: the base is the same model with its adapter switched off (half the
    memory and load time)."""

    def __init__(self, tuned_model, tuned_tokenizer, base_model, base_tokenizer, device,
                 autocast, shares_weights: bool):
        self.models = {"tuned": (tuned_model, tuned_tokenizer), "base": (base_model,
                                                                         base_tokenizer)}
        self.device, self.autocast, self.shares_weights = device, autocast, shares_weights

    @classmethod
    def load(cls, base: str, tuned: str, device: str = "auto", precision: str = "auto",
             trust_remote_code: bool = False, allow_pickle: bool = False) -> "ModelPair":
        model, tok, resolved, dev, autocast = load_for_eval(tuned, device, precision,
                                                           trust_remote_code, allow_pickle)
        return cls.around(model, tok, resolved, base, dev, autocast, trust_remote_code,
                          allow_pickle)

    @classmethod
    def around(cls, tuned_model, tuned_tokenizer, tuned_resolved, base: str, device, autocast,
               trust_remote_code: bool = False, allow_pickle: bool = False) -> "ModelPair":
        """A pair for an already-loaded tuned model (the end of training uses this)."""
        base_resolved = resolve(base)
        if (tuned_resolved.adapter is not None and base_resolved.adapter is None
                and _same_folder(base_resolved.path, tuned_resolved.path)):
            base_tok = load_tokenizer(base_resolved, trust_remote_code)
            return cls(tuned_model, tuned_tokenizer, tuned_model, base_tok, device, autocast,
                       shares_weights=True)
        base_model, base_tok, _, _, _ = load_for_eval(base, device, "fp32", trust_remote_code,
                                                      allow_pickle)
        return cls(tuned_model, tuned_tokenizer, base_model, base_tok, device, autocast,
                   shares_weights=False)

    @contextmanager
    def use(self, which: str):
        """(model, tokenizer) of "base" or "tuned", under the right autocast."""
        model, tokenizer = self.models[which]
        switch = model.disable_adapter() if which == "base" and self.shares_weights \
            else nullcontext()
        with switch, self.autocast():
            yield model, tokenizer


def same_seed_samples(pair: ModelPair, prompts: list[str], *, n: int, seed: int,
                      **settings) -> list[GenerationRow]:
    texts = {}
    for which in ("base", "tuned"):
        with pair.use(which) as (model, tokenizer):
            texts[which] = generate(model, tokenizer, prompts, n=n, seed=seed, **settings)
    rows = []
    for i, prompt in enumerate(prompts):
        part = slice(i * n, (i + 1) * n)
        rows.append(GenerationRow(prompt, [s.text for s in texts["base"][part]],
                                  [s.text for s in texts["tuned"][part]]))
    return rows


# ---------------------------------------------------------------------------------------------
# The command.

def pair_specs(base: str, tuned: str | None) -> tuple[str, str]:
    """`compare RUN` and `diff RUN` mean: RUN against the base named in its lmtune.json."""
    if not base:
        raise UserError("name the models to compare", hint="lmtune compare BASE TUNED, or "
                                                           "lmtune compare RUN")
    if tuned:
        return base, tuned
    info = resolve(base).info or {}
    if not info.get("base_model"):
        raise UserError(f"{base} is not a run folder of lmtune, so it names no base model",
                        hint=f"name both: lmtune compare BASE {base}")
    return info["base_model"], base


def compare(cfg: CompareConfig) -> CompareResult:
    base, tuned = pair_specs(cfg.base, cfg.tuned)
    saved = run_config(tuned)
    prompts = list(cfg.prompts) or (list(saved.sample_prompts) if saved is not None else [])
    if not prompts and not cfg.data and not cfg.reference:
        prompts = [""]  # nothing else asked for: unconditional samples
    if cfg.n < 1 or cfg.max_new_tokens < 1:
        raise UserError("-n and --max-new-tokens must be at least 1")
    plain = dataclasses.replace(cfg, format=None, split_on=None,
                                **{name: None for name in TEXT_OPTIONS})
    reference = dataclasses.replace(plain, data=cfg.reference)
    targets = [(opts, role) for opts, role in ((cfg, "target"), (reference, "reference"))
               if opts.data]
    for opts, role in targets:  # a bad data file fails here, before the models load
        read_examples(opts.data, with_run_data_options(opts, tuned if role == "target"
                                                       else None))
    pair = ModelPair.load(base, tuned, cfg.device, run_precision(tuned, cfg.precision),
                          cfg.trust_remote_code, cfg.allow_pickle)
    settings = dict(max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature,
                    top_k=cfg.top_k, top_p=cfg.top_p)
    result = CompareResult(base=base, tuned=tuned, settings=dict(settings, n=cfg.n,
                                                                 seed=cfg.seed))
    for opts, role in targets:
        losses = {}
        for which in ("base", "tuned"):
            with pair.use(which) as (model, tokenizer):
                # Both read the target data as the tuned run read its training data.
                _, docs = read_docs(opts, tokenizer, tuned if role == "target" else None)
                block, batch, pack = packing_for(tuned, model.config, cfg.block_size,
                                                 cfg.batch_size)
                # nullcontext: pair.use() has entered the autocast already.
                losses[which] = loss_on_docs(model, docs, block, batch, pair.device,
                                             nullcontext, pack)
        result.perplexity.append(PerplexityRow(
            data=str(opts.data), role=role, base_loss=losses["base"][0],
            tuned_loss=losses["tuned"][0], base_tokens=losses["base"][1],
            tuned_tokens=losses["tuned"][1]))
    if prompts:
        result.generations = same_seed_samples(pair, prompts, n=cfg.n, seed=cfg.seed,
                                               **settings)
    return result

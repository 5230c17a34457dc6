"""`lmtune data inspect` and the web page's data preview for preference pairs.

What a person preparing DPO data needs to see before training, from the tokens training will
use (tasks/preference/data.py reads and tokenizes them, nothing else does): how long prompts
and answers are against the length a pair is cut at, pairs that teach nothing (both answers the
same after the cut, or no answer token left), duplicates, and the biases DPO is known to learn
instead of the intended preference. Length is the classic one: when the chosen answer is the
longer one in nearly every pair, "longer is better" separates the pairs as well as the
preference does (Park et al. 2024, "Disentangling Length from Quality in DPO"), and a
model trained on them rambles.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np

from lmtune.config.defaults import PREFERENCE_MAX_LENGTH
from lmtune.data.chat_tokens import use_chat_template
from lmtune.data.tokenize import TokenizedDocs
from lmtune.errors import UserError
from lmtune.tasks.preference.data import (Pair, answer_tokens, holds_pairs, read_pairs,
                                          tokenize_pairs)

# The chosen answer is the longer one in at least this share of the pairs whose answers differ
# in length: a length bias worth a warning (random data sits near 0.5).
LENGTH_BIAS_WARN = 0.9
PREFIX_SHARE_WARN = 0.8  # answers that share most of their tokens: the pair turns on the rest


@dataclass
class PairReport:
    data: str
    model: str
    pairs: int
    chat: bool
    max_length: int                 # prompt + answer tokens kept of each sequence
    prompt_tokens: dict             # min, median, mean, p95, max (start token included)
    chosen_tokens: dict             # answer tokens and the end token
    rejected_tokens: dict
    over_max_length: int            # pairs with a sequence cut at max_length
    no_answer_left: int             # pairs the cut leaves without an answer token: not trained
    identical: int                  # both answers the same tokens after the cut: no signal
    duplicates: int                 # pairs identical to an earlier one
    chosen_longer: float            # of pairs with answers of unequal length: chosen longer
    shared_prefix: float            # mean share of the shorter answer both begin with
    tokens: int                     # both sequences of every pair, as a step sees them
    rendered_pair: dict             # the first pair as the model sees it, special tokens shown
    parameters: int | None = None
    warnings: list[str] = field(default_factory=list)
    kind: str = "pairs"

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _stats(values: np.ndarray) -> dict:
    return {"min": int(values.min()), "median": float(np.median(values)),
            "mean": round(float(values.mean()), 2),
            "p95": round(float(np.percentile(values, 95)), 2), "max": int(values.max())}


def _answers(docs: TokenizedDocs, max_length: int) -> tuple[list[np.ndarray], np.ndarray]:
    """(each sequence's answer tokens, end token included, that survive the cut at
    max_length; each sequence's prompt length: the tokens before its first answer token)."""
    out, prompts = [], np.zeros(len(docs.lengths), dtype=np.int64)
    for i, (a, n) in enumerate(zip(docs.starts, docs.lengths)):
        a, n = int(a), int(n)
        mask = np.asarray(docs.loss_mask[a:a + n], dtype=bool)
        prompts[i] = int(mask.argmax()) if mask.any() else n
        out.append(np.asarray(docs.ids[a:a + min(n, max_length)])[mask[:max_length]])
    return out, prompts


def _prefix_share(a: np.ndarray, b: np.ndarray) -> float:
    shorter = min(len(a), len(b))
    if not shorter:
        return 0.0
    differ = np.flatnonzero(a[:shorter] != b[:shorter])
    return (int(differ[0]) if len(differ) else shorter) / shorter


def describe_pairs(pairs: list[Pair], chosen: TokenizedDocs, rejected: TokenizedDocs, tokenizer,
                   *, data: str, model: str, max_length: int,
                   parameters: int | None = None) -> PairReport:
    whole = 1 << 62  # no cut: every answer token
    answer_c, answer_r = answer_tokens(chosen, whole), answer_tokens(rejected, whole)
    (kept_c, prompts), (kept_r, _) = _answers(chosen, max_length), _answers(rejected,
                                                                              max_length)
    longer = np.sign(answer_c - answer_r)
    unequal = int((longer != 0).sum())
    seen, duplicates = set(), 0
    for p in pairs:
        key = (p.turns, p.prompt, p.chosen, p.rejected)
        duplicates += key in seen
        seen.add(key)
    cut = (np.asarray(chosen.lengths) > max_length) | (np.asarray(rejected.lengths) > max_length)
    a, b = int(chosen.starts[0]), int(chosen.starts[0] + chosen.lengths[0])
    first_c = chosen.ids[a:b].tolist()
    first_p = first_c[:int(prompts[0])]
    a, b = int(rejected.starts[0]), int(rejected.starts[0] + rejected.lengths[0])
    first_r = rejected.ids[a:b].tolist()
    decode = lambda ids: tokenizer.decode(ids, skip_special_tokens=False)  # noqa: E731
    report = PairReport(
        data=data, model=model, pairs=len(pairs), chat=bool(pairs[0].turns),
        max_length=max_length, prompt_tokens=_stats(prompts), chosen_tokens=_stats(answer_c),
        rejected_tokens=_stats(answer_r), over_max_length=int(cut.sum()),
        no_answer_left=sum(1 for c, r in zip(kept_c, kept_r) if not len(c) or not len(r)),
        identical=sum(1 for c, r in zip(kept_c, kept_r)
                      if len(c) and len(c) == len(r) and (c == r).all()),
        duplicates=duplicates,
        chosen_longer=round(float((longer > 0).sum() / unequal), 4) if unequal else 0.5,
        shared_prefix=round(float(np.mean([_prefix_share(c, r)
                                           for c, r in zip(kept_c, kept_r)])), 4),
        tokens=int(np.minimum(chosen.lengths, max_length).sum()
                   + np.minimum(rejected.lengths, max_length).sum()),
        rendered_pair={"prompt": decode(first_p), "chosen": decode(first_c[len(first_p):]),
                       "rejected": decode(first_r[len(first_p):])},
        parameters=parameters)
    report.warnings = _warnings(report)
    return report


def _warnings(r: PairReport) -> list[str]:
    out = []
    if r.no_answer_left:
        out.append(f"{r.no_answer_left} pairs keep no answer token within {r.max_length} tokens "
                   f"(their prompt fills it): training leaves them out; raise --block-size")
    if r.over_max_length:
        out.append(f"{r.over_max_length} pairs are longer than {r.max_length} tokens and are "
                   f"cut: the end of their answers (and the end token) is not compared")
    if r.identical:
        out.append(f"{r.identical} pairs have the same chosen and rejected answer (after the "
                   f"cut): they teach nothing; fix or drop them")
    if r.duplicates:
        out.append(f"{r.duplicates} pairs ({100 * r.duplicates / r.pairs:.1f}%) are exact "
                   f"duplicates of earlier ones")
    if r.chosen_longer >= LENGTH_BIAS_WARN:
        out.append(f"the chosen answer is the longer one in {100 * r.chosen_longer:.0f}% of the "
                   f"pairs: DPO can learn 'longer is better' from that alone and make answers "
                   f"ramble; add pairs whose chosen answer is the shorter, or try --loss simpo "
                   f"(its reward is per token)")
    elif r.chosen_longer <= 1 - LENGTH_BIAS_WARN:
        out.append(f"the chosen answer is the shorter one in {100 * (1 - r.chosen_longer):.0f}% "
                   f"of the pairs: the model may learn to stop early rather than the preference "
                   f"itself")
    if r.shared_prefix >= PREFIX_SHARE_WARN:
        out.append(f"the two answers of a pair begin with the same tokens for "
                   f"{100 * r.shared_prefix:.0f}% of the shorter one on average: the preference "
                   f"rests on their last tokens")
    if r.pairs < 10:
        out.append(f"only {r.pairs} pairs: a few hundred make a preference a model can learn")
    return out


def read_and_describe_pairs(opts, tokenizer, *, model: str, block_size: int | None,
                            context: int, parameters: int | None = None
                            ) -> tuple[PairReport, TokenizedDocs, TokenizedDocs]:
    """Read `opts.data` as pairs, with the data flags of `opts` (prompt template, chosen and
    rejected columns), tokenize them as training does, and describe them; the documents come
    back too, for a preview."""
    pairs = read_pairs(str(opts.data), fmt=opts.format, encoding=opts.encoding,
                       prompt_template=opts.prompt_template,
                       chosen_column=getattr(opts, "chosen_column", None),
                       rejected_column=getattr(opts, "rejected_column", None))
    if not pairs:
        raise UserError(f"{opts.data} holds no preference pairs",
                        hint="one pair per line: {\"prompt\", \"chosen\", \"rejected\"}")
    if pairs[0].turns:  # rendered as training renders them
        use_chat_template(tokenizer)
    chosen, rejected = tokenize_pairs(pairs, tokenizer)
    max_length = block_size or min(PREFERENCE_MAX_LENGTH, context)
    report = describe_pairs(pairs, chosen, rejected, tokenizer, data=str(opts.data), model=model,
                            max_length=max_length, parameters=parameters)
    return report, chosen, rejected


def is_pair_file(opts) -> bool:
    """Pairs by their field names, or because the columns of the answers were named."""
    named = getattr(opts, "chosen_column", None) or getattr(opts, "rejected_column", None)
    return bool(named) or holds_pairs(str(opts.data), opts.format, opts.encoding)

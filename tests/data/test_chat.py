"""Chat data (data/chat.py, data/chat_tokens.py): OpenAI's {"messages": [...]} lines, rendered
with the model's chat template, the loss on the assistant's answers only."""

from __future__ import annotations

import json

import numpy as np
import pytest

import lmtune
from lmtune.data.examples import build_examples_with_stats
from lmtune.data.readers import read_records
from lmtune.data.tokenize import tokenize_examples
from lmtune.errors import UserError

CHATML = ("{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + "
          "'<|im_end|>\n' }}{% endfor %}{% if add_generation_prompt %}"
          "{{ '<|im_start|>assistant\n' }}{% endif %}")
QA = [("why did the programmer quit", "because he did not get arrays"),
      ("what is two plus four", "six"), ("where did the dog run", "in the park")]


def _conversation(question, answer, **extra):
    return {"messages": [{"role": "system", "content": "answer briefly"},
                         {"role": "user", "content": question},
                         {"role": "assistant", "content": answer, **extra}]}


def _write(path, rows):
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    return path


def _docs(path, tokenizer):
    examples, stats = build_examples_with_stats(read_records(path, fmt="jsonl"),
                                                source=str(path))
    return examples, stats, tokenize_examples(examples, tokenizer)


def _learned(tokenizer, docs, i):
    a, b = int(docs.starts[i]), int(docs.starts[i] + docs.lengths[i])
    ids, mask = docs.ids[a:b].tolist(), np.asarray(docs.loss_mask[a:b])
    return (tokenizer.decode([t for t, m in zip(ids, mask) if m]),
            tokenizer.decode([t for t, m in zip(ids, mask) if not m]), tokenizer.decode(ids))


def test_only_the_answers_and_their_end_count_in_the_loss(tiny_llama, tmp_path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_llama)
    tok.chat_template = CHATML
    rows = [_conversation(q, a) for q, a in QA]
    rows.append({"messages": [{"role": "user", "content": "hi"},
                              {"role": "assistant", "content": "old answer", "weight": 0},
                              {"role": "user", "content": "again"},
                              {"role": "assistant", "content": "new answer"}]})
    examples, stats, docs = _docs(_write(tmp_path / "chat.jsonl", rows), tok)
    assert stats["chat"] == 4 and stats["chat_prompts"] == [QA[0][0], QA[1][0]]
    learned, context, whole = _learned(tok, docs, 0)
    assert whole == ("<|im_start|>system\nanswer briefly<|im_end|>\n<|im_start|>user\nwhy did "
                     "the programmer quit<|im_end|>\n<|im_start|>assistant\nbecause he did not "
                     "get arrays<|im_end|>\n<|endoftext|>")
    assert learned == "because he did not get arrays<|im_end|>\n<|endoftext|>"
    learned, _, _ = _learned(tok, docs, 3)
    assert learned == "new answer<|im_end|>\n<|endoftext|>"  # weight 0: context only


def test_a_model_without_a_chat_template_learns_the_documented_fallback(tiny_gpt2, tmp_path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_gpt2)
    assert not tok.chat_template
    _, _, docs = _docs(_write(tmp_path / "chat.jsonl", [_conversation(*QA[1])]), tok)
    learned, _, whole = _learned(tok, docs, 0)
    assert whole == ("<|endoftext|>System:\nanswer briefly\n\nUser:\nwhat is two plus four\n\n"
                     "Assistant:\nsix<|endoftext|>\n\n")
    assert learned == "six<|endoftext|>\n\n"
    assert tok.chat_template  # set, so the run saves the format its model learned


@pytest.mark.parametrize("row, words", [
    ({"messages": [{"role": "user", "content": "hi"}]}, "line 2: the conversation has no "
                                                        "assistant message"),
    ({"messages": [{"role": "tool", "content": "x"}]}, "line 2: message 1 has role 'tool'"),
    ({"messages": [{"role": "user", "content": "x", "weight": 0},
                   {"role": "assistant", "content": "y"}]}, "message 1 has weight 0"),
    ({"messages": [{"role": "assistant", "content": 5}]}, "message 1 has no text content"),
])
def test_a_bad_conversation_is_refused_with_its_line(tiny_gpt2, tmp_path, row, words):
    from transformers import AutoTokenizer

    path = _write(tmp_path / "chat.jsonl", [_conversation(*QA[0]), row])
    with pytest.raises(UserError, match=words):
        _docs(path, AutoTokenizer.from_pretrained(tiny_gpt2))


def test_prompt_completion_lines_are_read_as_pairs(tiny_gpt2, tmp_path):
    path = _write(tmp_path / "pairs.jsonl", [{"prompt": q + "?", "completion": " " + a}
                                             for q, a in QA])
    examples, _ = build_examples_with_stats(read_records(path, fmt="jsonl"), source="x")
    assert (examples[0].prompt, examples[0].completion) == (QA[0][0] + "?", " " + QA[0][1])


def test_a_chat_run_answers_in_chat_and_stops(tiny_gpt2, tmp_path):
    rows = [{"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}
            for q, a in QA] * 20
    run = lmtune.train(_write(tmp_path / "chat.jsonl", rows), model=str(tiny_gpt2),
                       method="full", max_steps=80, lr=1e-2, block_size=64, precision="fp32",
                       sample_every=30, sample_max_new_tokens=16, report=False, seed=0,
                       out=str(tmp_path / "run"))
    info = json.loads((run.out / "final" / "lmtune.json").read_text())
    assert info["format"] == "chat"
    samples = [json.loads(line) for line in (run.out / "samples.jsonl").read_text().splitlines()]
    assert {s["prompt"] for s in samples} == {QA[0][0], QA[1][0]}
    # A chat run's prompts are questions: no --chat needed.
    answers = lmtune.generate(run.out, [QA[0][0], QA[2][0]], temperature=0,
                              max_new_tokens=24, precision="fp32")
    assert [(a.text, a.finish_reason) for a in answers] == [(QA[0][1], "stop"),
                                                            (QA[2][1], "stop")]

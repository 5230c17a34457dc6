"""`lmtune train --extend-tokenizer N` (issue 21): the base model's tokenizer is extended on the
training file, the extended model kept in $LMTUNE_HOME/extended/ and trained; LoRA trains the
new embedding rows and no old one; --warmup-embeddings updates only the embedding first."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from cli_helpers import assert_clean_error, run_cli
from safetensors.torch import load_file
from tiny_models import byte_level_tokenizer, chinese_corpus, llama_folder

import lmtune
from lmtune.errors import UserError

ADD = 60
FAST = dict(split_on="\n", block_size=64, batch_size=4, precision="fp32", device="cpu",
            seed=0, sample_every=0, report=False, log_every=1)


@pytest.fixture(autouse=True)
def home(tmp_path, monkeypatch) -> Path:
    """Each test's own $LMTUNE_HOME, so the extended models it makes are its own."""
    monkeypatch.setenv("LMTUNE_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return chinese_corpus(tmp_path_factory.mktemp("zh") / "zh.txt", lines=200)


@pytest.fixture(scope="module")
def tied_llama(tmp_path_factory) -> Path:
    return llama_folder(tmp_path_factory.mktemp("tied-llama"), byte_level_tokenizer(bos="<s>"),
                        tie_word_embeddings=True)


def _extended(home: Path) -> Path:
    folders = list((home / "extended").iterdir())
    assert len(folders) == 1, folders  # one extension per base, data and N
    return folders[0]


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    return {k: v for f in sorted(folder.glob("*.safetensors")) for k, v in load_file(f).items()}


def _rows(model):
    """(input embedding, output head or None when tied), as tensors."""
    emb, head = model.get_input_embeddings().weight, model.get_output_embeddings().weight
    return emb.detach().clone(), None if head is emb else head.detach().clone()


@pytest.mark.parametrize("name", ["tiny_gpt2", "tiny_llama", "tied_llama"])
def test_train_extends_the_tokenizer_then_trains_on_it(name, corpus, home, tmp_path, request):
    from transformers import AutoTokenizer
    base = request.getfixturevalue(name)
    said = []
    run = lmtune.train(str(corpus), model=str(base), out=str(tmp_path / "run"), method="full",
                       extend_tokenizer=ADD, max_steps=3, lr=1e-3, **FAST,
                       on_event=lambda e, d: said.append(d.get("text", "")))
    ext = _extended(home)
    assert f"tokenizer extended on zh.txt: {ADD} new pieces" in " ".join(said)
    n_base = len(AutoTokenizer.from_pretrained(base))
    tokenizer = AutoTokenizer.from_pretrained(run.final)
    assert len(tokenizer) == n_base + ADD == len(AutoTokenizer.from_pretrained(ext))
    info = json.loads((run.final / "lmtune.json").read_text())
    assert info["base_model"] == str(ext)
    assert info["tokenizer_extension"]["added"] == ADD
    gain = info["tokenizer_extension"]
    assert gain["chars_per_token_after"] > 1.5 * gain["chars_per_token_before"]
    config = (run.out / "config.yaml").read_text()
    assert f"extend_tokenizer: {ADD}" in config and f"model: {base}" in config
    evals = [json.loads(line) for line in (run.out / "metrics.jsonl").read_text().splitlines()
             if "val_loss" in line]
    # bits per character: the loss in nats per token, times tokens per character, in bits
    assert evals and all(0 < r["val_bits_per_char"] < 3 * r["val_loss"] for r in evals)
    ids = tokenizer(corpus.read_text(encoding="utf-8")[:300])["input_ids"]
    assert max(ids) >= n_base  # the data trains on the new pieces
    if name == "tiny_gpt2":  # the report says what the extension gained
        page = lmtune.write_report(str(run.out), compare=False).html.read_text()
        ratio = gain["chars_per_token_after"] / gain["chars_per_token_before"]
        assert "Extended tokenizer" in page and f"({ratio:.2f}x)" in page
        assert "loss per character (bits)" in page


def test_lora_trains_the_new_rows_and_no_old_one_and_merges(tiny_llama, corpus, home,
                                                            tmp_path):
    from transformers import AutoModelForCausalLM
    run = lmtune.train(str(corpus), model=str(tiny_llama), out=str(tmp_path / "run"),
                       method="lora", extend_tokenizer=ADD, max_steps=4, lr=1e-2, **FAST)
    adapter = load_file(run.final / "adapter_model.safetensors")
    assert any("trainable_tokens" in k for k in adapter)  # the rows travel with the adapter
    base = AutoModelForCausalLM.from_pretrained(_extended(home))
    merged_dir = lmtune.merge(str(run.out), str(tmp_path / "merged")).out
    merged = AutoModelForCausalLM.from_pretrained(merged_dir)
    n = base.config.vocab_size - ADD
    for before, after in zip(_rows(base), _rows(merged)):  # untied: both sides
        assert torch.equal(after[:n], before[:n])  # old rows bit for bit
        changed = (after[n:] - before[n:]).abs().amax(1) > 0
        assert changed.float().mean() > 0.5, changed  # most new pieces occur in the data
    assert merged.config.vocab_size == base.config.vocab_size
    again = lmtune.train(str(corpus), model=str(merged_dir), out=str(tmp_path / "again"),
                         method="lora", max_steps=1, **FAST)  # the merged rows have learned:
    assert not any("trainable_tokens" in k  # LoRA on them leaves them frozen, as any base
                   for k in load_file(again.final / "adapter_model.safetensors"))
    zh = corpus.read_text(encoding="utf-8")[:4]
    sample = lmtune.generate(str(run.out), [zh], max_new_tokens=8, device="cpu")[0]
    assert sample.prompt == zh  # the adapter loads with its rows over the extended base
    from lmtune.models.resolve import resolve
    from lmtune.serving import registry
    served = registry.load({"zh": resolve(str(run.out))}, device="cpu", dtype=torch.float32)
    assert served["zh"].vocab == base.config.vocab_size  # what lmtune serve loads
    diff = lmtune.diff(str(run.out))  # the new rows count as change, measured unmerged
    rows = {t["name"]: t for t in diff.tensors}
    for name in ("model.embed_tokens.weight", "lm_head.weight"):
        assert rows[name]["max_abs_diff"] > 0
    with pytest.raises(UserError, match="new token rows"):  # the adapter alone cannot hold them
        lmtune.export(str(run.out), str(tmp_path / "a.gguf"), format="gguf-lora")
    try:  # the LoRA run merged into one file, or refused with the reason
        got = lmtune.export(str(run.out), str(tmp_path / "m.gguf"), type="f32")
        assert got.out.is_file()
    except UserError as e:
        assert "tokenizer" in e.message, e.message


def test_lora_on_a_tied_embedding_keeps_it_tied(tiny_gpt2, corpus, home, tmp_path):
    from transformers import AutoModelForCausalLM
    run = lmtune.train(str(corpus), model=str(tiny_gpt2), out=str(tmp_path / "run"),
                       method="lora", extend_tokenizer=ADD, max_steps=3, lr=1e-2, **FAST)
    base = AutoModelForCausalLM.from_pretrained(_extended(home))
    merged = AutoModelForCausalLM.from_pretrained(
        lmtune.merge(str(run.out), str(tmp_path / "merged")).out)
    n = base.config.vocab_size - ADD
    emb, head = _rows(merged)
    assert head is None  # still one matrix
    old = base.get_input_embeddings().weight.detach()
    assert torch.equal(emb[:n], old[:n]) and not torch.equal(emb[n:], old[n:])
    assert "transformer.wte.weight" in lmtune.diff(str(run.out)).changed


def _resumable(model, tmp_path) -> dict:
    """An extended LoRA run on a constant rate with a checkpoint every 2 steps."""
    return dict(model=str(model), out=str(tmp_path / "run"), method="lora",
                extend_tokenizer=ADD, lr=1e-2, save_every=2, lr_schedule="constant",
                warmup_steps=0, **FAST)


def test_an_extended_lora_run_resumes_on_the_same_extended_model(tiny_llama, corpus, home,
                                                                 tmp_path):
    opts = _resumable(tiny_llama, tmp_path)
    lmtune.train(str(corpus), max_steps=2, **opts)
    ext = _extended(home)
    stamp = (ext / "model.safetensors").stat().st_mtime_ns
    resumed = lmtune.train(out=opts["out"], resume=True, max_steps=4)
    straight = lmtune.train(str(corpus), max_steps=4, **{**opts, "out": str(tmp_path / "b")})
    assert resumed.steps == 4 and _extended(home) == ext
    assert (ext / "model.safetensors").stat().st_mtime_ns == stamp  # found, not made again
    a = load_file(resumed.final / "adapter_model.safetensors")
    b = load_file(straight.final / "adapter_model.safetensors")
    assert a.keys() == b.keys()
    for k in a:  # the resumed run is the run never stopped
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5)


def test_a_resume_makes_a_removed_extension_again_the_same(tiny_llama, corpus, home,
                                                            tmp_path):
    import shutil
    opts = _resumable(tiny_llama, tmp_path)
    lmtune.train(str(corpus), max_steps=2, **opts)
    ext = _extended(home)
    before = (ext / "tokenizer.json").read_bytes(), (ext / "model.safetensors").read_bytes()
    shutil.rmtree(ext)  # the cache cleared between the stop and the resume
    resumed = lmtune.train(out=opts["out"], resume=True, max_steps=3)
    assert resumed.steps == 3 and _extended(home) == ext
    assert ((ext / "tokenizer.json").read_bytes(), (ext / "model.safetensors").read_bytes()) \
        == before  # learned again, byte for byte: the adapter sits on the same base


def test_warmup_updates_only_the_embedding_and_head_for_its_steps(tiny_llama, corpus, home,
                                                                   tmp_path):
    run = lmtune.train(str(corpus), model=str(tiny_llama), out=str(tmp_path / "run"),
                       method="full", extend_tokenizer=ADD, warmup_embeddings=2, max_steps=2,
                       lr=1e-2, **FAST)
    before, after = _weights(_extended(home)), _weights(run.final)
    moved = {k for k in before if not torch.equal(before[k], after[k])}
    assert moved == {"model.embed_tokens.weight", "lm_head.weight"}


def test_lora_warmup_trains_the_new_rows_and_leaves_lora_at_its_start(tiny_llama, corpus,
                                                                       home, tmp_path):
    run = lmtune.train(str(corpus), model=str(tiny_llama), out=str(tmp_path / "run"),
                       method="lora", extend_tokenizer=ADD, warmup_embeddings=3, max_steps=3,
                       lr=1e-2, **FAST)
    adapter = load_file(run.final / "adapter_model.safetensors")
    lora_b = [v for k, v in adapter.items() if "lora_B" in k]
    assert lora_b and all(not v.any() for v in lora_b)  # PEFT starts B at zero
    rows = [v for k, v in adapter.items() if "trainable_tokens" in k]
    base = _weights(_extended(home))["model.embed_tokens.weight"][-ADD:]
    assert any(v.shape == base.shape and not torch.equal(v, base) for v in rows)


@pytest.mark.parametrize("flags, needle", [
    (["--extend-tokenizer", "0"], "--extend-tokenizer must be at least 1 (got 0)"),
    (["--extend-tokenizer", "-5"], "--extend-tokenizer must be at least 1"),
    (["--warmup-embeddings", "2"], "needs --extend-tokenizer"),
    (["--extend-tokenizer", "10", "--task", "classify", "--text-column", "t",
      "--label-column", "l"], "--extend-tokenizer is for --task generate"),
])
def test_bad_numbers_are_one_error_line_and_write_nothing(tiny_gpt2, corpus, home, tmp_path,
                                                          capsys, flags, needle):
    out = tmp_path / "run"
    got = run_cli(capsys, ["train", corpus, "--model", tiny_gpt2, "--out", out, *flags])
    assert_clean_error(*got, needle)
    assert not out.exists() and not home.exists()


def test_a_tokenizer_extension_cannot_handle_is_refused_before_writing(corpus, home, tmp_path,
                                                                      capsys):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from tiny_models import save_folder
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    wp = Tokenizer(models.WordPiece({"[UNK]": 0, "[SEP]": 1, "the": 2}, unk_token="[UNK]"))
    wp.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=wp, unk_token="[UNK]", eos_token="[SEP]")
    folder = save_folder(GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=8, n_head=1,
                                                    vocab_size=3)), tok, tmp_path / "wp")
    out = tmp_path / "run"
    got = run_cli(capsys, ["train", corpus, "--model", folder, "--out", out,
                           "--extend-tokenizer", "10"])
    assert_clean_error(*got, "cannot extend a WordPiece tokenizer", "hint:")
    assert not out.exists()
    assert not (home / "extended").exists() or not any((home / "extended").iterdir())


def test_a_dry_run_times_the_extended_model_and_writes_no_run(tiny_gpt2, corpus, home,
                                                              tmp_path):
    out = tmp_path / "run"
    dry = lmtune.train(str(corpus), model=str(tiny_gpt2), out=str(out), method="lora",
                       extend_tokenizer=ADD, warmup_embeddings=1, dry_run=True, **FAST)
    assert dry.seconds_per_step > 0 and not out.exists()
    warnings = " ".join(dry.data.warnings)
    assert "tokenizer extend --corpus" not in warnings  # it is being extended already
    assert f"even with --extend-tokenizer {ADD}" in warnings  # 60 pieces are few
    assert _extended(home).is_dir()  # kept, as the token cache is, for the run to come


def test_the_run_says_how_often_it_reads_its_new_pieces(tiny_gpt2, corpus, home, tmp_path):
    """A new row learns only from the steps that hold its piece: the start note gives the
    median number of reads over the run, and says so when most pieces are read too rarely."""
    import numpy as np
    from transformers import AutoTokenizer

    said = {}
    for steps in (1, None):  # one step of a ~30-step epoch; the whole epoch
        notes = []
        lmtune.train(str(corpus), model=str(tiny_gpt2), out=str(tmp_path / f"r{steps}"),
                     method="full", extend_tokenizer=ADD, max_steps=steps, epochs=1,
                     val_split=0, **FAST, on_event=lambda e, d: notes.append(d.get("text", "")))
        said[steps] = next(n for n in notes if "tokenizer extended" in n)
    tok = AutoTokenizer.from_pretrained(_extended(home))
    first = len(tok) - ADD
    ids = np.concatenate([tok(line)["input_ids"] for line in
                          corpus.read_text(encoding="utf-8").split("\n") if line])
    counts = np.bincount(ids[ids >= first] - first, minlength=ADD)
    assert f"reads the median new piece {np.median(counts):.1f} times" in said[None]
    assert "add fewer" not in said[None]
    assert "add fewer (--extend-tokenizer)" in said[1]


@pytest.mark.parametrize("method", ["lora", "full"])
def test_a_folder_tokenizer_extend_wrote_trains_the_rows_its_text_reads_and_only_those(
        method, tiny_llama, corpus, home, tmp_path):
    """`train --model DIR` on a folder `lmtune tokenizer extend` wrote trains its new rows
    under LoRA too; a new piece the training text never holds keeps its averaged start
    exactly (training/unread_rows.py), on the input side and in the untied head."""
    from transformers import AutoTokenizer

    from lmtune.vocab.extend import extend_model
    ext = tmp_path / "ext"
    extend_model(str(tiny_llama), str(corpus), ADD, str(ext))
    lines = corpus.read_text(encoding="utf-8").splitlines()[:12]
    few = tmp_path / "few.txt"
    few.write_text("\n".join(lines) + "\n", encoding="utf-8")
    notes = []
    run = lmtune.train(str(few), model=str(ext), out=str(tmp_path / "run"), method=method,
                       max_steps=4, lr=1e-2, val_split=0, **FAST,
                       on_event=lambda e, d: notes.append(d.get("text", "")))
    assert any(f"extended by {ADD} pieces" in n and "their rows train too" in n for n in notes)
    tok = AutoTokenizer.from_pretrained(ext)
    first = len(tok) - ADD
    read = {i - first for line in lines for i in tok(line)["input_ids"] if i >= first}
    assert 0 < len(read) < ADD  # the test means something only when some pieces are unread
    start = _weights(ext)
    after = _weights(run.final)
    for side, name in {"embed_tokens": "model.embed_tokens.weight",
                       "lm_head": "lm_head.weight"}.items():
        (rows,) = ([v for k, v in after.items() if "trainable_tokens" in k and side in k]
                   if method == "lora" else [after[name][first:]])
        before = start[name][first:]
        moved = {i for i in range(ADD) if not torch.equal(rows[i], before[i])}
        assert moved == read, side

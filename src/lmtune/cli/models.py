"""`lmtune generate` and `lmtune merge`."""

from __future__ import annotations

import json

from lmtune.config import GenerateConfig, MergeConfig
from lmtune.errors import UserError


def cmd_generate(cfg: GenerateConfig) -> int:
    from lmtune.api import load
    from lmtune.models.generate import generate_from_config

    model, tokenizer = load(cfg.model, device=cfg.device, precision="fp32",
                            trust_remote_code=cfg.trust_remote_code,
                            allow_pickle=cfg.allow_pickle)
    copies = memorization_index(cfg, tokenizer)  # --check-memorization DATA, read up front
    samples = generate_from_config(cfg, model, tokenizer)
    for i, s in enumerate(samples):
        check = copies.check(s.prompt, s.text).to_dict() if copies else {}
        if cfg.json:
            print(json.dumps({**s.to_dict(), **check}, ensure_ascii=False))
        else:
            if i:
                print("-" * 40)
            # A chat answer is a reply, not a continuation: the prompt gets its own line.
            print(f"> {s.prompt}\n{s.text}" if cfg.chat else s.prompt + s.text)
            if check:
                print(memorization_line(check))
    return 0


def cmd_merge(cfg: MergeConfig) -> int:
    from lmtune.models.merge import merge

    if not cfg.run or not cfg.out:
        raise UserError("merge needs a run folder and --out", hint="lmtune merge RUN --out DIR")
    result = merge(cfg.run, cfg.out, trust_remote_code=cfg.trust_remote_code,
                   allow_pickle=cfg.allow_pickle)
    print(f"merged model: {result.out}")
    print(f"largest logit difference between adapter and merged model: "
          f"{result.max_logit_diff:.2e}")
    return 0


def cmd_export(cfg) -> int:
    from lmtune.api import export

    if not cfg.run or not cfg.out:
        raise UserError("export needs a run folder and --out",
                        hint="lmtune export RUN --out model.gguf [--type q8_0]")
    result = export(cfg.run, cfg.out, format=cfg.format, type=cfg.type,
                    trust_remote_code=cfg.trust_remote_code, allow_pickle=cfg.allow_pickle)
    if cfg.format == "vllm":
        if result.note:
            print(result.note)
        what = "LoRA adapter" if result.kind == "adapter" else "model folder"
        print(f"wrote {result.out} (a {what} for vLLM)")
        print(f"serve it: {result.command}")
        return 0
    gguf = result if cfg.format != "ollama" else result.gguf
    print(f"wrote {gguf.out} ({gguf.architecture}, {gguf.type}, {gguf.tensors} tensors, "
          f"{gguf.bytes / 1e6:.1f} MB)")
    if cfg.format == "ollama":
        print(f"wrote {result.out / 'Modelfile'}:")
        print("  " + result.modelfile.rstrip().replace("\n", "\n  "))
        print(f"try it: cd {result.out} && ollama create NAME -f Modelfile && ollama run NAME")
    elif cfg.format == "gguf-lora":
        print(f"try it: lmtune export BASE --out base.gguf, then llama-cli -m base.gguf "
              f"--lora {gguf.out} -p '...'")
    else:
        print(f"try it: llama-cli -m {gguf.out} -p '...'")
    return 0


# ---------------------------------------------------------------------------------------------
# generate --check-memorization

def memorization_index(cfg, tokenizer):
    """The index of --check-memorization DATA (read as the run read its data), or None."""
    if not cfg.check_memorization:
        return None
    from lmtune.analysis.memorization import index_for_file

    return index_for_file(cfg.check_memorization, tokenizer, cfg.model)


def memorization_line(check: dict) -> str:
    verdict = "a verbatim copy of a training example" if check["verbatim"] else \
        "not a verbatim copy"
    return f"[memorization: longest copied run {check['copied_tokens']} tokens; {verdict}]"

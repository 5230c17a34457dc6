"""Loading what `resolve` found: the tokenizer, the base model (checked before transformers
reads it: trust.py) and, for a run, its LoRA adapter on top."""

from __future__ import annotations

import pickle
from pathlib import Path

from lmtune.errors import UserError
from lmtune.models.resolve import Resolved, refuse_classifier, resolve
from lmtune.trust import check_weights, refuse_remote_code


def load_tokenizer(resolved: Resolved, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    # A run's artifact folder carries the tokenizer (possibly with an added pad token).
    source = resolved.adapter if resolved.adapter and (
        resolved.adapter / "tokenizer_config.json").is_file() else resolved.path
    refuse_remote_code(Path(source), resolved.spec, trust_remote_code)
    tok = AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code)
    if tok.eos_token_id is None:
        raise UserError(f"the tokenizer of {resolved.spec} has no end-of-sequence token",
                        hint="lmtune teaches every example to end with it; use a tokenizer "
                             "that has one")
    if tok.pad_token_id is None:
        # Padding positions are masked by position (labels -100, attention 0), so reusing EOS
        # as the pad id is safe here; no new embedding row is needed.
        tok.pad_token = tok.eos_token
    return tok


def load_base(resolved: Resolved, *, dtype=None, trust_remote_code: bool = False,
              attn_implementation: str | None = "sdpa", auto_class=None,
              allow_pickle: bool = False, **config_overrides):
    """The model at `resolved.path` (without any adapter), as `auto_class` (default
    AutoModelForCausalLM; classification passes AutoModelForSequenceClassification with
    num_labels, id2label, label2id and pad_token_id as `config_overrides`). Weights come from
    safetensors unless `allow_pickle` (see trust.py)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    auto_class = auto_class or AutoModelForCausalLM
    refuse_remote_code(Path(resolved.path), resolved.spec, trust_remote_code)
    check_weights(Path(resolved.path), resolved.spec, allow_pickle)
    config = AutoConfig.from_pretrained(resolved.path, trust_remote_code=trust_remote_code)
    if getattr(config, "auto_map", None) and not trust_remote_code:
        raise UserError(f"model {resolved.spec} asks to run code from its repository",
                        hint="pass --trust-remote-code if you trust its author")
    # use_safetensors=True: transformers never falls back to a pickle it finds next to them.
    kwargs = dict(dtype=dtype or torch.float32, trust_remote_code=trust_remote_code,
                  use_safetensors=None if allow_pickle else True, **config_overrides)
    try:
        return auto_class.from_pretrained(resolved.path, attn_implementation=
                                          attn_implementation, **kwargs)
    except pickle.UnpicklingError as e:  # --allow-pickle, and the pickle holds more than tensors
        raise UserError(f"the pickled weights of {resolved.spec} hold objects other than "
                        f"tensors and were not loaded ({str(e).splitlines()[0].strip()})",
                        hint="ask its author for safetensors weights") from None
    except (ValueError, ImportError) as e:
        if "attn" not in str(e).lower() and "sdpa" not in str(e).lower():
            raise
        # Architectures without SDPA support (older GPT-Neo code paths) fall back to eager.
        return auto_class.from_pretrained(resolved.path, **kwargs)


def load(spec: str | None = None, *, dtype=None, trust_remote_code: bool = False,
         merge: bool = False, allow_pickle: bool = False):
    """Model (with its adapter applied, if any) and tokenizer, ready for inference."""
    resolved = resolve(spec)
    refuse_classifier(resolved)
    tok = load_tokenizer(resolved, trust_remote_code)
    model = load_base(resolved, dtype=dtype, trust_remote_code=trust_remote_code,
                      allow_pickle=allow_pickle)
    if resolved.adapter is not None:
        from peft import PeftModel

        check_weights(resolved.adapter, str(resolved.adapter), allow_pickle)

        model = PeftModel.from_pretrained(model, resolved.adapter)
        if merge:
            model = model.merge_and_unload(safe_merge=True)
    model.eval()
    return model, tok, resolved


def context_length(config) -> int:
    for name in ("max_position_embeddings", "n_positions", "n_ctx", "seq_length"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return 2048


def config_layers(config) -> int | None:
    """The number of transformer blocks a model config names; None when it names none."""
    for name in ("num_hidden_layers", "n_layer", "num_layers"):
        value = getattr(config, name, None)
        if isinstance(value, int):
            return value
    return None


def num_layers(model) -> int:
    n = config_layers(model.config)
    if n is None:
        raise UserError(f"cannot tell how many layers {model.config.model_type} has; use "
                        f"--method lora or full")
    return n


def peek_config(resolved: Resolved, trust_remote_code: bool = False):
    """The model's config alone (no weights): its context, layers and type, for the checks
    and the plan made before anything heavy loads."""
    from transformers import AutoConfig

    refuse_remote_code(Path(resolved.path), resolved.spec, trust_remote_code)
    return AutoConfig.from_pretrained(resolved.path, trust_remote_code=trust_remote_code)

"""Loading what `resolve` found: the tokenizer, the base model (checked before transformers
reads it: trust.py, and a folder lmtune wrote against its manifest) and, for a run, its LoRA
adapter on top. A file transformers cannot read (a truncated config or tokenizer, an unknown
architecture, weights that do not fit) is one error line naming the folder."""

from __future__ import annotations

import pickle
from contextlib import contextmanager
from pathlib import Path

from lmtune.errors import UserError
from lmtune.models.resolve import Resolved, refuse_classifier, resolve
from lmtune.progress import stage
from lmtune.run.artifact import verify_artifact
from lmtune.trust import check_weights, refuse_remote_code


@contextmanager
def reading(what: str, folder):
    """Errors of transformers, PEFT or tokenizers while they read `folder` as one line."""
    try:
        yield
    except (UserError, MemoryError):
        raise
    except Exception as e:  # only the library's reading runs inside: its errors are the file's
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
        raise UserError(f"cannot read the {what} in {folder}: {first}",
                        hint="the folder is damaged or incomplete, or made for another "
                             "library; copy or download it again") from None


def check_folder(folder: Path, spec: str, allow_pickle: bool) -> None:
    """A local folder about to be loaded: lmtune's own checked against their manifest, every
    weight file checked before a loader sees it."""
    verify_artifact(folder)
    check_weights(folder, spec, allow_pickle)


def attach_adapter(model, folder: Path, *, allow_pickle: bool = False,
                   adapter_name: str | None = None):
    """A LoRA adapter folder onto `model` (onto a PeftModel: as one more adapter)."""
    from peft import PeftModel

    check_folder(folder, str(folder), allow_pickle)
    with reading("LoRA adapter", folder):
        if isinstance(model, PeftModel):
            model.load_adapter(folder, adapter_name=adapter_name)
            return model
        named = {} if adapter_name is None else {"adapter_name": adapter_name}
        return PeftModel.from_pretrained(model, folder, **named)


def load_tokenizer(resolved: Resolved, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    # A run's artifact folder carries the tokenizer (possibly with an added pad token).
    source = resolved.adapter if resolved.adapter and (
        resolved.adapter / "tokenizer_config.json").is_file() else resolved.path
    refuse_remote_code(Path(source), resolved.spec, trust_remote_code)
    with reading("tokenizer", source):
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
    safetensors unless `allow_pickle` (see trust.py). A stage from the first import on: on a
    slow disk or CPU the imports and the weights took tens of seconds with nothing shown."""
    with stage(f"loading {resolved.spec}"):
        return _load_base(resolved, dtype, trust_remote_code, attn_implementation, auto_class,
                          allow_pickle, config_overrides)


def _load_base(resolved, dtype, trust_remote_code, attn_implementation, auto_class,
               allow_pickle, config_overrides):
    import torch
    from transformers import AutoModelForCausalLM

    auto_class = auto_class or AutoModelForCausalLM
    refuse_remote_code(Path(resolved.path), resolved.spec, trust_remote_code)
    check_folder(Path(resolved.path), resolved.spec, allow_pickle)
    config = peek_config(resolved, trust_remote_code)
    if getattr(config, "auto_map", None) and not trust_remote_code:
        raise UserError(f"model {resolved.spec} asks to run code from its repository",
                        hint="pass --trust-remote-code if you trust its author")
    # use_safetensors=True: transformers never falls back to a pickle it finds next to them.
    kwargs = dict(dtype=dtype or torch.float32, trust_remote_code=trust_remote_code,
                  use_safetensors=None if allow_pickle else True, **config_overrides)
    with reading("model", resolved.path):
        try:
            return auto_class.from_pretrained(resolved.path, attn_implementation=
                                              attn_implementation, **kwargs)
        except pickle.UnpicklingError as e:  # --allow-pickle, and it holds more than tensors
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
        model = attach_adapter(model, resolved.adapter, allow_pickle=allow_pickle)
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


def checkpoint_layers(model) -> None:
    """Activation checkpointing (--gradient-checkpointing): each decoder layer keeps its input
    and runs again in the backward pass. Non-reentrant (torch.utils.checkpoint's
    use_reentrant=False), so a frozen base under LoRA needs no gradient on its inputs, and the
    layer's random state is replayed: dropout draws the same mask twice."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if not getattr(base, "supports_gradient_checkpointing", False):
        raise UserError(f"{type(base).__name__} cannot recompute its layers "
                        f"(--gradient-checkpointing)", hint="train without it")
    base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def parameter_count(resolved: Resolved, trust_remote_code: bool = False) -> int:
    """What `model.parameters()` counts once the model loads (tied weights once, buffers not
    at all), from its config alone: the model is built on the meta device and no weight is
    read. A file count would differ (old GPT-2 checkpoints store attention masks)."""
    import torch
    from transformers import AutoModelForCausalLM

    config = peek_config(resolved, trust_remote_code)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)
    return sum(p.numel() for p in model.parameters())


def peek_config(resolved: Resolved, trust_remote_code: bool = False):
    """The model's config alone (no weights): its context, layers and type, for the checks
    and the plan made before anything heavy loads."""
    from transformers import AutoConfig

    refuse_remote_code(Path(resolved.path), resolved.spec, trust_remote_code)
    with reading("model config", resolved.path):
        return AutoConfig.from_pretrained(resolved.path, trust_remote_code=trust_remote_code)

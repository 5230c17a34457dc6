"""The one seam through which training gets its exact-equivalent speed-ups: `speedups(...)`
decides, from the device and the run, which of this package's pieces a model gets (when it is
made: before any DDP or FSDP wrapper, as those must see the model's final modules), and owns
the step workspace while it is entered. Training and the dry run enter the same object, so a
timed step is the step that trains.

  attention   CPU: packed attention for known families (packed_attention.py), else eager
              attention for blocks up to EAGER_MAX_BLOCK; GPUs keep SDPA or flash attention
  GELU        every device: GPT-2's eight-op GELU as torch's fused one (gelu.py)
  dropout     CPU: drawing only the dropped positions (dropout.py)
  memory      CPU, one process: the loss's vocabulary-sized buffers in a workspace kept
              between steps, and direct embedding/head gradients (step_memory.py)
  new rows    every device: LoRA's trained rows of an extended vocabulary without PEFT's
              vocabulary-sized copies (trainable_rows.py)

Each keeps the model's function: the same outputs (within float rounding) and the same saved
weights. Nothing here changes which weights train or what the optimizer does.
"""

from __future__ import annotations

from contextlib import ExitStack

from lmtune.fast.dropout import use_fast_dropout
from lmtune.fast.gelu import use_fused_gelu
from lmtune.fast.packed_attention import prefer_eager_attention, use_packed_attention
from lmtune.fast.step_memory import StepMemory, cpu_step_memory
from lmtune.fast.trainable_rows import use_trainable_rows

EAGER_MAX_BLOCK = 512  # see packed_attention.prefer_eager_attention


def _transformers_model(model):
    """The transformers model inside a PEFT wrapper, if any."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


class speedups:  # noqa: N801 (a context: `fast = speedups(model, ...)`; `with fast:`)
    """`model` is the model as trained, after the method wrapped it and before any DDP or
    FSDP wrapper; `one_process`: no other rank shares the step (DDP reduces gradients from
    autograd's hooks, which the direct gradients bypass). The model's attention, GELU and
    dropout are switched here; the step memory is opened on entering."""

    def __init__(self, model, *, device: str, block_size: int, one_process: bool):
        self.model, self.device, self.one_process = model, device, one_process
        self.memory: StepMemory | None = None
        self._stack = ExitStack()
        hf_model = _transformers_model(model)
        if device == "cpu" and not use_packed_attention(hf_model) \
                and block_size <= EAGER_MAX_BLOCK:
            prefer_eager_attention(hf_model)
        use_fused_gelu(model)
        use_trainable_rows(model)
        if device == "cpu":
            use_fast_dropout(model)

    def __enter__(self) -> "speedups":
        if self.device == "cpu" and self.one_process:
            self.memory = self._stack.enter_context(cpu_step_memory(self.model))
        return self

    def release_buffers(self) -> None:
        """Training is over: free the kept buffers before the final save and the report."""
        if self.memory is not None:
            self.memory.release()

    def __exit__(self, *exc) -> None:
        self._stack.close()
        self.memory = None

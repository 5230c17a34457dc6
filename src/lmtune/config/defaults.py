"""Every default that lmtune computes rather than states, with the reason for its value.

A config field whose default is `None` ("choose for me") is filled from these at run start,
and its help text is built from them too (config/train.py), so the two cannot drift apart; a
test holds each help text against the value the code actually chooses.
"""

from __future__ import annotations

DEFAULT_MODEL = "smollm2-135m"
METHODS = ("lora", "full", "freeze")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
DEVICES = ("auto", "cpu", "cuda", "mps")
SCHEDULES = ("cosine", "linear", "constant")
TASKS = ("generate", "classify", "preference")
CLASS_WEIGHTS = ("none", "auto")
DATA_FORMATS = ("txt", "csv", "tsv", "json", "jsonl", "parquet")

# Peak learning rates: an adapter starts at zero and needs a large step; full and freeze
# move pretrained weights, where 5e-5 (full) and 1e-4 (freeze, fewer weights) do not wreck
# what the model knows.
DEFAULT_LR = {"lora": 1e-3, "full": 5e-5, "freeze": 1e-4}

# --task preference. The losses and their strength follow TRL (huggingface/trl, read at commit
# f2cd577): DPO is DPOTrainer's loss_type="sigmoid" with DPOConfig.beta = 0.1; ORPO's lambda is
# ORPOConfig.beta = 0.1; SimPO is CPOTrainer's loss_type="simpo" (cpo_alpha=0) with
# CPOConfig.beta = 0.1 and simpo_gamma = 0.5. The SimPO paper's beta 2, gamma 1 drove the loss
# lower on the run measured below (LoRA, 1e-4: validation loss 0.004 against 0.67) with no
# better samples, so TRL's values stay.
PREFERENCE_LOSSES = ("dpo", "orpo", "simpo")
PREFERENCE_BETA = {"dpo": 0.1, "orpo": 0.1, "simpo": 0.1}
SIMPO_GAMMA = 0.5
# TRL's learning rate for all three is 1e-6 (DPOConfig, ORPOConfig, CPOConfig), for full
# fine-tuning of billion-parameter models; PREFERENCE_LR holds lmtune's, per method. LoRA DPO
# on SmolLM2-135M (300 chat pairs, helpful against rude answers, 40 steps of 4 pairs, CPU):
# 1e-4 reached held-out reward accuracy 1.0 with the chosen answers' reward still rising
# (+0.20) and clean samples; 5e-4 the same accuracy, the chosen reward already falling
# (-0.11); 2e-3 (the SFT rate) pushed the chosen answers down too (-2.9) and its samples
# fell apart. A longer run moves further, so the lowest rate that learned is the default.
# Full DPO on the same run: 5e-6 reached accuracy 1.0 with the chosen reward rising (+0.34);
# 5e-5 pushed it down (-0.28). Freeze's 1e-5 sits between the two, unmeasured.
PREFERENCE_LR = {"lora": 1e-4, "full": 5e-6, "freeze": 1e-5}
PREFERENCE_MAX_LENGTH = 1024  # tokens of prompt + answer kept (DPOConfig.max_length)
PREFERENCE_BATCH = (2, 8)     # pairs per automatic batch, at least and at most (TRL: 8)

# Tokens per optimizer step are sized from the corpus (tasks/plan.py): a fixed 8 x 1024 would
# give a few hundred short jokes one step per epoch, and nothing is learned.
TARGET_STEPS_PER_EPOCH = 48
MIN_TOKENS_PER_STEP = 256
MAX_TOKENS_PER_STEP = 8192
MAX_BLOCK = 1024        # longest automatic block; attention cost grows with its length
MIN_AUTO_BLOCK = 64     # shortest automatic block
CLASSIFY_MAX_LENGTH = 512  # texts to classify are mostly short; attention cost grows as T^2
CLASSIFY_BATCH = (4, 32)   # texts per automatic classification batch, at least and at most

WARMUP_SHARE = 0.05     # warmup is this share of the steps ...
MAX_WARMUP = 100        # ... but at most this many
EVALS_PER_RUN = 5       # validation passes in a run when --eval-every is not given
# Checkpoints at the default interval (each evaluation) come at most this often: a checkpoint
# of a 30M-parameter model took 2-3 s on a 2-core AVX2 EPYC, and a 75-s run wrote six, a
# tenth of its time; a crash loses at most these minutes, a stop loses nothing.
SAVE_MINUTES = 5.0
# `lmtune demo`: passes over pyjokes' English jokes, and the whole command's minutes (model
# conversion on first use included) measured on a quiet 2-core AMD EPYC (AVX2, fp32); the
# README and --quick's help quote them.
DEMO_EPOCHS = 3.0
DEMO_MINUTES = {"full": "about 5", "quick": "about 2.5"}
FREEZE_SHARE = 4        # --method freeze trains the top 1/FREEZE_SHARE of the blocks

# Where each family keeps its projections; PEFT picks "all-linear" for other families.
LORA_TARGETS = {
    "gpt2": ["c_attn", "c_proj", "c_fc"],
    "gpt_neo": ["q_proj", "k_proj", "v_proj", "out_proj", "c_fc", "c_proj"],
    "gptj": ["q_proj", "k_proj", "v_proj", "out_proj", "fc_in", "fc_out"],
    "gpt_neox": ["query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"],
}
LLAMA_LIKE = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
LLAMA_LIKE_TYPES = ("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "phi3", "olmo",
                    "smollm3", "granite")

# Evaluation without a run's own batch size: 2K tokens per forward pass keep the logits
# (tokens x vocabulary floats, 50K words for GPT-2 and SmolLM2) near 400 MB.
TOKENS_PER_EVAL_BATCH = 2048


def default_lora_targets(model_type: str) -> list[str] | str:
    if model_type in LORA_TARGETS:
        return LORA_TARGETS[model_type]
    if model_type in LLAMA_LIKE_TYPES:
        return LLAMA_LIKE
    return "all-linear"  # PEFT picks every linear layer except the output head

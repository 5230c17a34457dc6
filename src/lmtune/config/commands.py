"""The options of every command but train (config/train.py): generate, merge, predict, data
prepare and inspect, demo, serve, eval, compare, diff and report."""

from __future__ import annotations

from dataclasses import dataclass

from lmtune.config.defaults import (DATA_FORMATS, DEFAULT_MODEL, DEMO_EPOCHS, DEMO_MINUTES,
                                    DEVICES, MAX_BLOCK, PRECISIONS, TOKENS_PER_EVAL_BATCH)
from lmtune.config.fields import (ALLOW_PICKLE_HELP, THREADS_HELP, TRUST_REMOTE_CODE_HELP,
                                  opt)
from lmtune.config.train import DataOptions

CHOSEN_COLUMN_HELP = ("With preference pairs: the column that holds the preferred answer "
                      "(default: the run's own, else chosen).")
REJECTED_COLUMN_HELP = ("With preference pairs: the column that holds the other answer "
                        "(default: the run's own, else rejected).")


@dataclass
class GenerateConfig:
    model: str = opt(DEFAULT_MODEL, "Model or run folder (a run means its final/ model).",
                     positional=True)
    prompts: list[str] = opt([], repeat=True,
                             help="Prompt; repeatable (default: one unconditional sample).",
                             alias="--prompt")
    n: int = opt(1, "Samples per prompt, generated as one batch.", alias="-n")
    max_new_tokens: int = opt(100, "Most tokens generated per sample.")
    temperature: float = opt(0.8, "Sampling temperature (0 = greedy).")
    top_k: int = opt(50, "Sample from the k most likely tokens (0 = off).")
    top_p: float = opt(0.95, "Nucleus sampling: smallest set of tokens with this probability.")
    repetition_penalty: float = opt(1.0, "Penalty > 1 discourages repeating tokens.")
    seed: int | None = opt(None, "Random seed for reproducible samples.")
    stop: list[str] = opt([], repeat=True, help="Stop a sample at this string; repeatable.")
    chat: bool = opt(False, "Wrap each prompt in the model's chat template as a user message "
                     "(always on for a run trained on conversations).")
    json: bool = opt(False, "Print one JSON object per sample instead of text.")
    device: str = opt("auto", "Device to run on.", choices=DEVICES)
    threads: int | None = opt(None, THREADS_HELP)
    precision: str = opt("auto", "Numeric precision.", choices=PRECISIONS)
    trust_remote_code: bool = opt(False, TRUST_REMOTE_CODE_HELP)
    allow_pickle: bool = opt(False, ALLOW_PICKLE_HELP)
    check_memorization: str | None = opt(None, "Training data to check each sample against "
                                         "(read with the run's own template): the longest run "
                                         "of tokens copied from it and whether the sample is a "
                                         "verbatim copy of a training example.")


@dataclass
class MergeConfig:
    run: str = opt("", "LoRA run folder (or adapter folder) to merge into its base.",
                   positional=True)
    out: str = opt("", "Folder for the standalone merged model.")
    trust_remote_code: bool = opt(False, TRUST_REMOTE_CODE_HELP)
    allow_pickle: bool = opt(False, ALLOW_PICKLE_HELP)


@dataclass
class ExportConfig:
    run: str = opt("", "Run folder (its final model; a LoRA run is merged first), checkpoint "
                   "or model folder to export.", positional=True)
    format: str = opt("gguf", "What to write: gguf, one file for llama.cpp, Ollama and LM "
                      "Studio; ollama, a folder with that file and a Modelfile whose template "
                      "and stop reproduce the run's training format; gguf-lora, a LoRA run's "
                      "adapter alone, for llama.cpp's --lora over the base model's GGUF "
                      "(Llama family); vllm, a folder for vllm serve (a LoRA adapter where "
                      "vLLM serves LoRA on the model, else a model folder), with the command "
                      "printed.", choices=["gguf", "ollama", "gguf-lora", "vllm"])
    out: str = opt("", "The file (gguf, gguf-lora) or folder (ollama, vllm) to write; it must "
                   "not exist yet.")
    type: str | None = opt(None, "Weight type: f32, f16, bf16, q8_0 (8-bit, about half of "
                           "f16's size) or q4_0 (4-bit); norms and biases stay f32. Default: "
                           "f16 for gguf, q8_0 for ollama, f32 for gguf-lora, bf16 for vllm "
                           "(whose model folders take f32, f16 or bf16).",
                           choices=["f32", "f16", "bf16", "q8_0", "q4_0"])
    trust_remote_code: bool = opt(False, TRUST_REMOTE_CODE_HELP)
    allow_pickle: bool = opt(False, ALLOW_PICKLE_HELP)


@dataclass
class PredictConfig:
    run: str = opt("", "Classification run folder (a run means its final/ model) or one of its "
                   "checkpoints.", positional=True)
    texts: list[str] = opt([], repeat=True, help="Text to classify; repeatable.", alias="--text")
    data: str | None = opt(None, "File of texts to classify (.csv, .tsv, .json, .jsonl, "
                           ".parquet, or .txt with one text per line); '-' reads one text per "
                           "line from standard input and answers each as it arrives (the "
                           "model loads once).")
    text_column: str | None = opt(None, "Column or field of --data that holds the text "
                                  "(default: the run's own).")
    template: str | None = opt(None, "Build each text of --data from fields (default: the "
                               "run's own template, if it had one).")
    format: str | None = opt(None, "Format of --data; detected from the extension when not "
                             "given.", choices=DATA_FORMATS)
    encoding: str = opt("utf-8", "Text encoding of --data.")
    out: str | None = opt(None, "Write the predictions to this CSV file (text, label, and one "
                          "probability column per label) instead of printing them.")
    json: bool = opt(False, "Print one JSON object per text: text, label, probabilities.")
    batch_size: int = opt(32, "Texts per forward pass.")
    device: str = opt("auto", "Device to run on.", choices=DEVICES)
    threads: int | None = opt(None, THREADS_HELP)
    trust_remote_code: bool = opt(False, TRUST_REMOTE_CODE_HELP)
    allow_pickle: bool = opt(False, ALLOW_PICKLE_HELP)


@dataclass
class PrepareConfig(DataOptions):
    model: str | None = opt(None, "Model whose tokenizer to use (default: the embedded "
                            f"'{DEFAULT_MODEL}').", group="model")
    json: bool = opt(False, "Print the result as one JSON object.")
    trust_remote_code: bool = opt(False, "Allow a tokenizer to run code from its repository.",
                                  group="model")


@dataclass
class DemoConfig:
    out: str | None = opt(None, "Run folder (default: runs/pyjokes-en-<time>).")
    epochs: float = opt(DEMO_EPOCHS, "Passes over the jokes.")
    quick: bool = opt(False, f"One pass over the jokes instead of {DEMO_EPOCHS:g}: "
                      f"{DEMO_MINUTES['quick']} minutes instead of {DEMO_MINUTES['full']} on a "
                      f"quiet 2-core CPU (measured, see the README).")
    model: str | None = opt(None, "Model to fine-tune (default: the embedded "
                            "SmolLM2-135M-Instruct).")
    threads: int | None = opt(None, THREADS_HELP)
    trust_remote_code: bool = opt(False, TRUST_REMOTE_CODE_HELP)
    allow_pickle: bool = opt(False, ALLOW_PICKLE_HELP)


@dataclass
class ServeConfig:
    models: list[str] = opt([], "Models or run folders to serve; runs whose LoRA adapters "
                            "share a base load that base once (default: the embedded "
                            f"'{DEFAULT_MODEL}').", positional=True)
    names: list[str] = opt([], repeat=True, metavar="NAME=PATH",
                           help="Serve a model or run under a name of your choice: NAME=PATH; "
                           "repeatable. Requests select it with \"model\": \"NAME\".",
                           alias="--name")
    host: str = opt("127.0.0.1", "Address to listen on; anything but loopback needs --api-key "
                    "or --insecure.")
    port: int = opt(8000, "Port to listen on (0 picks a free one).")
    api_key: str | None = opt(None, "Require 'Authorization: Bearer KEY' on every route but "
                              "/health (default: the LMTUNE_API_KEY environment variable, "
                              "which keeps the key out of the process list).")
    api_keys_file: str | None = opt(None, "A file of API keys, one per line, each accepted as "
                                    "--api-key is; each key sees only the files, jobs and "
                                    "fine-tuned models it created.")
    insecure: bool = opt(False, "Allow listening on a non-loopback address without an API key.")
    max_tokens_cap: int = opt(512, "Largest max_tokens a request may ask for.")
    max_concurrency: int = opt(16, "Requests generated at once, as one batch.")
    max_queue: int = opt(64, "Requests waiting beyond --max-concurrency; more are answered "
                         "429 at once.")
    max_request_bytes: int = opt(1_000_000, "Largest request body; larger ones get 413.")
    max_upload_bytes: int = opt(512 * 1024 * 1024, "Largest file upload (POST /v1/files); "
                                "larger ones get 413.")
    max_queued_jobs: int = opt(8, "Fine-tuning jobs one API key may have waiting (validating "
                               "or queued) at once; more are answered 429.")
    job_devices: int = opt(1, "Processes each fine-tuning job trains on, one per GPU "
                           "(lmtune train --devices).")
    workers: int = opt(1, "Processes that train fine-tuning jobs (POST /v1/fine_tuning/jobs), "
                       "one job each at a time; 0 starts none (run `lmtune worker` instead).")
    store: str | None = opt(None, "Database of the fine-tuning service, as a SQLAlchemy URL "
                            "(default: SQLite in $LMTUNE_HOME/service).")
    runs: str = opt("runs", "Folder of runs from `lmtune train` that the web page lists beside "
                    "the fine-tuning jobs (train's default --out is inside ./runs).")
    drain_timeout: float = opt(60.0, "On SIGTERM, seconds to let in-flight requests finish "
                               "before stopping anyway.")
    device: str = opt("auto", "Device to run on.", choices=DEVICES)
    threads: int | None = opt(None, THREADS_HELP)
    precision: str = opt("auto", "Numeric precision of the weights: auto picks bf16 on GPUs and "
                         "CPUs that support it, else fp32.", choices=PRECISIONS)
    trust_remote_code: bool = opt(False, TRUST_REMOTE_CODE_HELP)
    allow_pickle: bool = opt(False, ALLOW_PICKLE_HELP)


@dataclass
class WorkerConfig:
    store: str | None = opt(None, "Database of the fine-tuning service, the one `lmtune serve "
                            "--store` names (default: SQLite in $LMTUNE_HOME/service).")
    name: str | None = opt(None, "This worker's name in the jobs it takes (default: host and "
                           "process id).")
    once: bool = opt(False, "Stop when the queue is empty instead of waiting for jobs.")
    device: str = opt("auto", "Device jobs train on.", choices=DEVICES)
    devices: int = opt(1, "Processes each job trains on, one per GPU (lmtune train "
                       "--devices, under torchrun).")
    precision: str = opt("auto", "Numeric precision jobs train in.", choices=PRECISIONS)
    parent: int | None = opt(None, "Stop (a running job checkpoints and queues again) when the "
                             "process with this id ends: lmtune serve starts its workers so.")


SERVER_URL = "http://127.0.0.1:8000"


@dataclass
class JobsOptions:
    url: str = opt(SERVER_URL, "The lmtune server whose fine-tuning API to use (lmtune serve).")
    api_key: str | None = opt(None, "API key (default: the LMTUNE_API_KEY environment "
                              "variable).")
    json: bool = opt(False, "Print the API's JSON objects, one per line.")


@dataclass
class JobsCreateConfig(JobsOptions):
    data: str = opt("", "Training data: .jsonl of chat messages ({\"messages\": [...]}), "
                    "prompt/completion pairs or text.", positional=True)
    model: str = opt(DEFAULT_MODEL, "Base model to fine-tune: a name or path the server can "
                     "load.")
    validation: str | None = opt(None, "Validation data (same formats).")
    suffix: str | None = opt(None, "Part of the fine-tuned model's name (up to 64 characters).")
    seed: int | None = opt(None, "Seed of the job (default: chosen by the server).")
    epochs: int | None = opt(None, "Passes over the data (default: auto, from its size).")
    batch_size: int | None = opt(None, "Blocks per step (default: auto).")
    lr_multiplier: float | None = opt(None, "Multiplies the default learning rate (default: 1).")
    wait: bool = opt(False, "Follow the job's events until it has finished.")


@dataclass
class JobConfig(JobsOptions):
    job: str = opt("", "Job id (ftjob-...).", positional=True)
    follow: bool = opt(False, "events: keep printing new events until the job has finished.")


@dataclass
class EvalConfig(DataOptions):
    data: str = opt("", "Data to evaluate on (same formats and data flags as train; a run's own "
                    "template is used when none is given).", group="data")
    model: str = opt(DEFAULT_MODEL, "Model, run folder or checkpoint to evaluate.",
                     positional=True, group="model")
    block_size: int | None = opt(None, "Tokens per packed block (default: the run's own, else "
                                 f"min({MAX_BLOCK}, the model's context)).", group="evaluation")
    batch_size: int | None = opt(None, "Blocks per forward pass (default: the run's own, else "
                                 f"about {TOKENS_PER_EVAL_BATCH} tokens per batch).",
                                 group="evaluation")
    json: bool = opt(False, "Print one JSON object (loss, perplexity, tokens, ...; for a "
                     "classification run accuracy, macro_f1, per_class, confusion_matrix, ...).",
                     group="output")
    plot: str | None = opt(None, "With a classification run: write the confusion matrix to this "
                           "image file (e.g. confusion.png).", group="output")
    text_column: str | None = opt(None, "With a classification run: the column that holds the "
                                  "text (default: the run's own).", group="data")
    label_column: str | None = opt(None, "With a classification run: the column that holds "
                                   "the label (default: the run's own).", group="data")
    chosen_column: str | None = opt(None, CHOSEN_COLUMN_HELP, group="data")
    rejected_column: str | None = opt(None, REJECTED_COLUMN_HELP, group="data")
    device: str = opt("auto", "Device to run on.", choices=DEVICES, group="evaluation")
    threads: int | None = opt(None, THREADS_HELP, group="evaluation")
    precision: str = opt("auto", "Numeric precision (auto: as training picks it).",
                         choices=PRECISIONS, group="evaluation")
    trust_remote_code: bool = opt(False, TRUST_REMOTE_CODE_HELP, group="model")
    allow_pickle: bool = opt(False, ALLOW_PICKLE_HELP, group="model")


@dataclass
class CompareConfig(DataOptions):
    data: str = opt("", "Target data: the perplexity of both models on it (a run's own "
                    "template is used when none is given).", group="data")
    base: str = opt("", "Base model; given alone, a run folder compared against the base "
                    "named in its lmtune.json.", positional=True, group="models")
    tuned: str | None = opt(None, "Fine-tuned model or run folder.", positional=True,
                            group="models")
    reference: str | None = opt(None, "General text (read as plain documents, no template): "
                                "perplexity on it shows forgetting next to learning.",
                                group="data")
    prompts: list[str] = opt([], repeat=True,
                             help="Prompt to generate from with both models; repeatable.",
                             alias="--prompt", group="generation")
    n: int = opt(2, "Samples per prompt from each model.", alias="-n", group="generation")
    max_new_tokens: int = opt(60, "Most tokens per sample.", group="generation")
    temperature: float = opt(0.8, "Sampling temperature (0 = greedy).", group="generation")
    top_k: int = opt(50, "Sample from the k most likely tokens (0 = off).", group="generation")
    top_p: float = opt(0.95, "Nucleus sampling threshold.", group="generation")
    seed: int = opt(0, "Seed shared by both models' samples.", group="generation")
    block_size: int | None = opt(None, "Tokens per packed block for perplexity (default: the "
                                 f"run's own, else min({MAX_BLOCK}, the model's context)).",
                                 group="evaluation")
    batch_size: int | None = opt(None, "Blocks per forward pass (default: the run's own, else "
                                 f"about {TOKENS_PER_EVAL_BATCH} tokens per batch).",
                                 group="evaluation")
    json: bool = opt(False, "Print one JSON object instead of tables.", group="output")
    device: str = opt("auto", "Device to run on.", choices=DEVICES, group="evaluation")
    threads: int | None = opt(None, THREADS_HELP, group="evaluation")
    precision: str = opt("auto", "Numeric precision.", choices=PRECISIONS, group="evaluation")
    trust_remote_code: bool = opt(False, TRUST_REMOTE_CODE_HELP, group="models")
    allow_pickle: bool = opt(False, ALLOW_PICKLE_HELP, group="models")


@dataclass
class DiffConfig:
    base: str = opt("", "Base model; given alone, a run folder compared against the base named "
                    "in its lmtune.json.", positional=True)
    tuned: str | None = opt(None, "Fine-tuned model or run folder (full, freeze or LoRA).",
                            positional=True)
    json: bool = opt(False, "Print one JSON object with every tensor and block.")
    plot: str | None = opt(None, "Write a PNG showing, block by block, where the weights "
                           "changed.")
    top: int = opt(15, "Tensors listed in the table, largest relative change first (0: all).")
    trust_remote_code: bool = opt(False, TRUST_REMOTE_CODE_HELP)
    allow_pickle: bool = opt(False, ALLOW_PICKLE_HELP)


@dataclass
class ReportConfig:
    run: str = opt("", "Run folder.", positional=True)
    compare: bool = opt(True, "Generate before/after samples on the run's sample prompts "
                        "(loads the base model).")
    device: str = opt("auto", "Device for the before/after samples.", choices=DEVICES)
    threads: int | None = opt(None, THREADS_HELP)
    trust_remote_code: bool = opt(False, TRUST_REMOTE_CODE_HELP)
    allow_pickle: bool = opt(False, ALLOW_PICKLE_HELP)


@dataclass
class InspectConfig(DataOptions):
    model: str | None = opt(None, f"Model whose tokenizer counts the tokens (default: "
                            f"'{DEFAULT_MODEL}'); a run folder also lends its template.",
                            group="model")
    block_size: int | None = opt(None, "Block size to check example lengths against (default: "
                                 f"the run's own, else min({MAX_BLOCK}, the model's context)).",
                                 group="data")
    chosen_column: str | None = opt(None, CHOSEN_COLUMN_HELP, group="data")
    rejected_column: str | None = opt(None, REJECTED_COLUMN_HELP, group="data")
    json: bool = opt(False, "Print one JSON object instead of the report.", group="output")
    trust_remote_code: bool = opt(False, TRUST_REMOTE_CODE_HELP, group="model")


@dataclass
class TokenizerStatsConfig(DataOptions):
    data: str = opt("", "Text to measure the tokenizers on (same formats and data flags as "
                    "train).", group="data")
    models: list[str] = opt([], repeat=True, alias="--model", group="model",
                            help=f"Model or run folder whose tokenizer to measure; repeatable, "
                                 f"for several side by side (default: '{DEFAULT_MODEL}').")
    json: bool = opt(False, "Print one JSON object per tokenizer instead of the table.",
                     group="output")
    trust_remote_code: bool = opt(False, TRUST_REMOTE_CODE_HELP, group="model")


@dataclass
class TokenizerExtendConfig:
    model: str | None = opt(None, f"Model whose tokenizer and embedding to extend (default: "
                            f"'{DEFAULT_MODEL}'); a LoRA run must be merged first.")
    corpus: str = opt("", "Text in the new language (.txt, learned line by line, or .csv, "
                      ".json, .jsonl, .parquet with --column).")
    column: str | None = opt(None, "Column or field of --corpus that holds the text.")
    encoding: str = opt("utf-8", "Text encoding of --corpus.")
    add: int = opt(20000, "Most new pieces to add (each a new token and embedding row).")
    out: str = opt("", "Folder for the extended model; it must be new or empty.")
    json: bool = opt(False, "Print one JSON object instead of the summary.")
    trust_remote_code: bool = opt(False, TRUST_REMOTE_CODE_HELP)
    allow_pickle: bool = opt(False, ALLOW_PICKLE_HELP)

"""Typed configs: the one place where defaults and help text live.

  defaults.py   every default lmtune chooses (learning rates, plan sizes, LoRA targets ...)
  fields.py     a field with its help text; building a config from a YAML file and values
  train.py      `lmtune train`'s options and their checks
  commands.py   every other command's options

`None` means "choose for me": the value is resolved from the data and the model at run start,
and the resolved value is what a run saves.
"""

from lmtune.config.commands import (CompareConfig, DemoConfig, DiffConfig, EvalConfig,
                                    ExportConfig, GenerateConfig, InspectConfig, MergeConfig,
                                    PredictConfig,
                                    PrepareConfig, ReportConfig, ServeConfig,
                                    TokenizerExtendConfig, TokenizerStatsConfig,
                                    WorkerConfig, JobsOptions, JobsCreateConfig, JobConfig,
                                    SERVER_URL)
from lmtune.config.defaults import (CLASS_WEIGHTS, DEFAULT_LR, DEFAULT_MODEL, DEVICES, METHODS,
                                    PRECISIONS, SCHEDULES, TASKS)
from lmtune.config.fields import (ALLOW_PICKLE_HELP, TRUST_REMOTE_CODE_HELP, build, coerce,
                                  field_types, flag, load_yaml, opt, to_yaml)
from lmtune.config.train import (ONE_SHOT_ACTIONS, RESOLVED_AT_START, DataOptions, TrainConfig,
                                 check_against_model, check_block_size, check_train, read_saved,
                                 refuse, saved_form)

__all__ = [
    "CompareConfig", "DemoConfig", "DiffConfig", "EvalConfig", "ExportConfig", "GenerateConfig",
    "InspectConfig", "MergeConfig", "PredictConfig", "PrepareConfig", "ReportConfig",
    "ServeConfig", "TokenizerExtendConfig", "TokenizerStatsConfig", "WorkerConfig",
    "JobsOptions", "JobsCreateConfig", "JobConfig",
    "SERVER_URL", "DataOptions", "TrainConfig", "CLASS_WEIGHTS", "DEFAULT_LR",
    "DEFAULT_MODEL", "DEVICES", "METHODS", "PRECISIONS", "SCHEDULES", "TASKS",
    "ALLOW_PICKLE_HELP", "TRUST_REMOTE_CODE_HELP", "build", "coerce", "field_types", "flag",
    "load_yaml", "opt", "to_yaml", "ONE_SHOT_ACTIONS", "RESOLVED_AT_START", "check_against_model",
    "check_block_size", "check_train", "read_saved", "refuse", "saved_form",
]

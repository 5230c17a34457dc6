"""Training: one loop for every task and method.

  train.py     `train()`, top to bottom: checks, set-up, dry run or fit
  setup.py     everything before the first step (data, model, method, optimizer): `Setup`
  step.py      one optimizer step, `train_step`, shared by the loop and the dry run
  loop.py      `fit`: steps, logging, validation, samples, checkpoints, final model
  dryrun.py    `--dry-run`: a few timed steps and the time a run will take
  methods.py   full, freeze, LoRA: which weights train
  unread_rows.py  an extended vocabulary's new rows move only on the steps that read them
  optim.py     AdamW, the learning-rate schedule, gradient clipping
  launch.py    `--devices N`: the same training under torchrun
  flops.py     model FLOPs utilisation for the logs
  result.py    TrainResult, Interrupted
"""

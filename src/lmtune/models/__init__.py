"""Models: from what the user typed to weights in memory, and what is done with them.

  resolve.py   a name, folder, run or hub id -> where the weights are (`Resolved`)
  load.py      the tokenizer and the model (checked first: trust.py), with a run's adapter
  forward.py   the forward pass on lmtune's batches and the token-summed loss
  generate.py  sampling, every prompt and sample in one batch
  merge.py     a LoRA run folded into a standalone model
"""

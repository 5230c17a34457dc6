"""A model's tokenizer measured and extended for a new language.

  stats.py    `lmtune tokenizer stats`: characters per token and byte-fallback share, side by side
  bpe.py      a BPE tokenizer.json with a corpus's new pieces added (no torch)
  extend.py   `lmtune tokenizer extend`: that tokenizer, the embedding grown to match, one folder
  calibrate.py  the new output rows moved to predict each piece as often as the corpus holds it
  cached.py   `lmtune train --extend-tokenizer N`: that folder for a run, kept in $LMTUNE_HOME

It sits beside tasks/, above models/ (it loads models and tokenizers) and below training/
(which can call it for `train --extend-tokenizer`).
"""

"""Did it learn, did it memorise, what changed: questions asked of models, runs and data.

  evaluate.py       `lmtune eval`: loss and perplexity on a file, packed as in training
  compare.py        a base and a tuned model side by side (samples with one seed, perplexity)
  diff.py           how far each weight tensor and block moved (LoRA measured unmerged)
  memorization.py   the longest run a sample copies from the training data
  data_report.py    `lmtune data inspect`: what a data file becomes for a model
  data_preview.py   its first examples token by token, context and loss told apart (web page)
  learned.py        a run against its base: learned, forgot, memorised (web page; cached)
  report.py         a run's loss.png and self-contained report.html
"""

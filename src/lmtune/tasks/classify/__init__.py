"""--task classify: a label per text from a decoder model's label head.

  data.py      labelled files -> (text, label) rows -> tokens -> length-grouped batches
  task.py      the task the training loop runs (loss, validation metrics, what to save)
  predict.py   a trained classifier: load once, label many texts
  evaluate.py  accuracy, F1, confusion matrix and baseline on labelled data
  metrics.py   the metrics, with scikit-learn's definitions
"""

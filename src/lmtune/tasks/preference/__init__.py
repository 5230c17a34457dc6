"""--task preference: a chosen over a rejected answer to each prompt (DPO, ORPO, SimPO).

  data.py       pairs in TRL's, OpenAI's or a table's columns -> tokens -> batches of pairs
  losses.py     the three losses and the rewards, as TRL computes them
  reference.py  DPO's reference log-probabilities for full and freeze: computed once, cached
  task.py       the task the training loop runs
"""

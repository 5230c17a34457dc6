"""Training tasks: what differs between learning to continue text and learning a label per
text, behind one interface (base.py) that the training loop calls.

  generate.py   --task generate (the default): language modelling
  classify/     --task classify: a label head on the same models, and prediction with it
  preference/   --task preference: a chosen over a rejected answer (DPO, ORPO, SimPO)
  plan.py       the step plan both share: block, batch, steps, learning rate, intervals
"""

from __future__ import annotations

from lmtune.errors import UserError


def task_for(cfg):
    """The task object of `cfg.task` (config checks the name against TASKS)."""
    if cfg.task == "classify":
        from lmtune.tasks.classify.task import Classification
        return Classification()
    if cfg.task == "generate":
        from lmtune.tasks.generate import LanguageModeling
        return LanguageModeling()
    if cfg.task == "preference":
        from lmtune.tasks.preference.task import Preference
        return Preference()
    raise UserError(f"unknown --task {cfg.task!r}; choose generate, classify or preference")

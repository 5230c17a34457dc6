"""A training run on disk: its folder and layout (folder.py), model artifacts (artifact.py),
checkpoints (checkpoint.py) and what resuming needs (resume.py)."""

"""The OpenAI fine-tuning API over local hardware: files, jobs, events and checkpoints in a
store (store.py), jobs checked before they queue (validate.py), run by worker processes
(worker.py) through the same training as `lmtune train`, and shown in OpenAI's shapes
(objects.py). The HTTP routes live in serving/; this package never imports them."""

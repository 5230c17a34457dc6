"""`lmtune serve`: models and runs behind an OpenAI-compatible HTTP API.

  registry.py   names -> loaded weights; LoRA runs over one base share that base
  engine.py     the scheduler thread; batch.py the continuous batch; sampling.py tokens
  app.py        FastAPI app, auth, errors; routes.py the endpoints; schemas.py the bodies
  server.py     check, bind, load, serve, drain on SIGTERM
"""

from lmtune.serving.server import serve

__all__ = ["serve"]

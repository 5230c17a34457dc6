"""A run taken to where people run models: GGUF for llama.cpp, Ollama and LM Studio
(gguf.py). Beside analysis/: it reads runs and models (models/, run/) and writes files."""

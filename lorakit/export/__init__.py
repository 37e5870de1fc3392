"""Export: adapters and merged models to the files other runtimes load (GGUF for llama.cpp and Ollama)."""

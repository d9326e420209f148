"""LoRA training through llama.cpp: the in-process engine, its worker process and supervisor."""

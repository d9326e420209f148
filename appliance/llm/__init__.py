"""Everything that touches llama.cpp: model files, the runtime, adapters, the tiny test model.

No other package imports `llama_cpp`; they go through `appliance.llm.runtime`.
"""

"""Federated learning on LoRA adapters: update codec, aggregation strategies, audit log.

Pure numpy: nothing here touches llama.cpp or MQTT, so it can be tested exhaustively and
reused by both daemons.
"""

"""MQTT transport: the only package that touches paho-mqtt.

- `client`: one paho client (MQTT v5, persistent session, TLS, reconnect) and the thread
  that runs every handler, so callbacks never block the network loop.
- `topics`: the `appliance/v1/<plant>/...` topic tree.
- `wire`: versioned message schemas (pydantic) and the binary chunk format.
- `outbox`: the durable SQLite queue of everything a node must still deliver.
- `sender` / `receiver`: signed, chunked, resumable artifact transfer on top of both.
"""

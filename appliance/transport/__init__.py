"""MQTT transport: the only package that touches paho-mqtt.

- `client`: one paho client (MQTT v5, persistent or clean session, TLS, reconnect) and the
  thread that runs every handler, so callbacks never block the network loop.
- `tls`: TLS contexts and broker credentials (files or `$CREDENTIALS_DIRECTORY`).
- `topics`: the `appliance/v1/<plant>/...` topic tree.
- `wire`: versioned message schemas (pydantic), the signed envelope, the binary chunk format.
- `outbox`: the durable SQLite queue of everything a node must still deliver.
- `sender` / `receiver`: signed, chunked, resumable artifact transfer on top of both.
- `node`: all of it for one node, as the daemons use it; `events`: what it hands them
  (`ArtifactArrived`, `MessageArrived`), pulled by their main loop and acknowledged.
- `rejects`: refusal reasons and counters.

The protocol is described in `docs/protocol.md`.
"""

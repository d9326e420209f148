"""The box's local inference service: an OpenAI-compatible HTTP API over the served model.

Plant applications talk to it with any OpenAI client library. Requests wait in one queue and
are served in order by a small pool of model contexts (`contexts`, default 1); the global
adapter is swapped on a context only between two requests, and every response names the
adapter version that produced it (`X-Appliance-Adapter-Version`). While requests are served,
the edge daemon's training worker is frozen, so inference comes before training.

Modules: `protocol` (request validation, response shapes), `errors` (OpenAI error bodies),
`guard` (auth, rate and size limits), `workers` (queue, contexts, adapter swaps),
`priority` (pausing training), `metrics` (Prometheus text), `app` (routes), `server`
(uvicorn on its own thread), `edge` (the hook the edge service calls).
"""

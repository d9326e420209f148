"""Hardware health: probes, Sparkplug B edge node and primary host, fleet store and alerts.

Box side: `runner` runs the probes in `firmware_scripts/` (their reading code is in
`probes/`) and validates their JSON with `readings`; `metrics` flattens readings into
Sparkplug metrics that `edge_node` publishes; `gate` decides whether training may run;
`reporter` ties these together. Aggregator side: `host` is the Sparkplug primary host that
keeps `store` and evaluates `alerts`; `fleet` and `prometheus` show the result; `fleet_host`
ties these together. `sparkplug` is the only module that touches the protobuf schema.
See docs/health.md.
"""

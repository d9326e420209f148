"""Hardware health: probes, Sparkplug B edge node and primary host, fleet store and alerts.

The box side runs the probes in `firmware_scripts/` (reading code in `probes/`), validates
their JSON with `readings`, flattens it into Sparkplug metrics and publishes them from
`edge_node`. The aggregator side (`host`) is the Sparkplug primary host: it keeps the fleet's
metrics in `store`, evaluates `alerts`, and serves `prometheus` and `fleet` status.
"""

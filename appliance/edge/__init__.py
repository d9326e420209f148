"""The edge daemon: ingests plant data, trains when a round asks, serves the global adapter."""

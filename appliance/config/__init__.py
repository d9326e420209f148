"""Configuration of both roles, one pydantic module per concern.

`load_config(path)` reads an edge or aggregator TOML file (chosen by its `role` key) and
raises `ConfigError` with lines of the form `FILE: key.path: reason` when it is invalid.
"""

from appliance.config.loading import load_config
from appliance.config.roles import AggregatorConfig, EdgeConfig, NodeConfig

__all__ = ["AggregatorConfig", "EdgeConfig", "NodeConfig", "load_config"]

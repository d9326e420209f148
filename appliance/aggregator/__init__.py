"""The plant aggregator daemon: runs rounds, combines updates, publishes global adapters."""

"""Staged rollout of global adapters: canary boxes first, promotion or automatic rollback.

`canary` picks the boxes, `gate` judges their evaluations, `store` keeps the rollout state in
SQLite next to the round store, `controller` drives it from the aggregator's main loop, and
`operator` queues an operator's rollback and pin commands for the running aggregator.
"""

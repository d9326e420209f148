"""The return-on-investment report: what each round of training bought, per box and fleet.

`collect` reads the aggregator's own records (audit log, round store, rollout store, fleet
health store) into one table of rounds and one of (round, box) cells; `energy` turns health
readings into joules; `charts` draws them with plotly; `page` writes the offline HTML,
`tables` the CSV files and the terminal summary; `build` runs them in order.
"""

"""`tunelab sweep`: Optuna studies over run configs, every trial an ordinary run directory.

spec (the sweep file) -> resolved (the sweep resolved and checked) -> driver (study, workers, live table) ->
worker (one trial at a time through gateway, the one module that touches the core) -> results
(ranking, best.yaml) and report (report.html with the sweep's views).
"""

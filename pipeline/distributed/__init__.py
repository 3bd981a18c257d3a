"""`--engine ray`: the behave, hidden and sentences stages fanned out over a Ray cluster.

One module per stage, each with a ``run(cfg, opts)`` that the command line (`cli.ENGINES`)
calls instead of the stage's own: `behave` (actors that generate; the driver alone writes
the trial log store), `hidden` (a task per model x strategy) and `sentences` (a task per
corpus unit). `cluster` holds what they share: the Ray session, how many workers the
cluster fits and what travels to a worker. The drivers only call the stages' public
functions, so a Ray run writes what a local run writes.
"""

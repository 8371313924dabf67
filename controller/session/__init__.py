"""One timed session: the worker, its state machine, checks, reports, and the start
service every route uses."""

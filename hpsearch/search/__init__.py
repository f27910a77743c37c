"""The search: the one driver that asks, trains, reports, prunes and tells trials; its
samplers and pruning; its worker processes."""

"""simulation: a world with known truth (catalog, users, grades), click and reaction models,
search sessions with noisy queries, the simulator that drives any policy in-process or over
HTTP, and A/B tests and interleaving on top of it."""

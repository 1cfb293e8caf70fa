"""A training run: its settings tree (`RunConfig`), its directory and lock, its learner and data."""

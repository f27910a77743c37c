"""Engines: what trains a search's members (one training run each), epoch by epoch."""

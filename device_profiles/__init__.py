"""Shipped device profiles: one YAML file per device model, found by id."""

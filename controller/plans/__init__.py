"""Treatment plans: the format, presets, and the runner."""

"""Device simulator: the device side of each protocol family, on pseudo-terminals."""

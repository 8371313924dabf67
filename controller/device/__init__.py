"""The device layer: a profile's operations over a protocol engine, identification."""

"""The `modctl` command line."""

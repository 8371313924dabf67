"""Device profiles: the format, loading with line-numbered errors, and the checks that
prove a profile safe to use."""

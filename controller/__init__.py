"""modctl controller: profiles, prescriptions, sessions, records and the CLI."""

__version__ = "0.1.0"

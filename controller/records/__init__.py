"""Records: sessions, events, telemetry, the audit chain, clinic tables, history and reports."""

"""The clinicians' web console served by `modctl serve` at `/` (docs/console.md)."""

"""kilowatch.store."""

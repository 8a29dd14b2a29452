"""kilowatch.broker."""

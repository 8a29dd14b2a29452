"""kilowatch.shelly."""

"""kilowatch.simulator."""

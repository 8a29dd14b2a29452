"""kilowatch.fleet."""

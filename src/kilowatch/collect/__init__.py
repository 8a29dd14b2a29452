"""kilowatch.collect."""

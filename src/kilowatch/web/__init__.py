"""kilowatch.web."""

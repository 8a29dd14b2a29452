"""kilowatch.service."""

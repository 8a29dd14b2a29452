"""kilowatch.cli."""

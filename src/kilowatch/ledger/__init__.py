"""kilowatch.ledger."""

"""kilowatch: self-hosted energy monitor and fleet manager for smart power meters."""

__version__ = "0.1.0"

__all__ = ["__version__"]

"""kilowatch.store.redis: the Redis backend (one server or a Redis Cluster), one module per
concern; ``open_store("redis://…")`` gives its :class:`RedisStore`. Layout: docs/storage.md."""

from __future__ import annotations

from kilowatch.store.redis.store import RedisStore

__all__ = ["RedisStore"]

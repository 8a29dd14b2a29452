"""redis-py's errors become StoreErrors that say what failed, with the evidence and a hint, even
when the exception itself says nothing (redis-py 8's ``MaxConnectionsError()``)."""

from __future__ import annotations

import pytest
from redis import exceptions as redis_errors

from kilowatch.errors import StoreError
from kilowatch.store.redis.connection import store_error


@pytest.mark.parametrize(
    ("err", "evidence", "hint"),
    [
        (redis_errors.MaxConnectionsError(), "MaxConnectionsError", "connection pool"),
        (TimeoutError(), "TimeoutError", "no answer within"),
        (redis_errors.TimeoutError(), "TimeoutError", "no answer within"),
        (redis_errors.ConnectionError(), "ConnectionError", "is redis-server running there"),
        (OSError(), "OSError", "is redis-server running there"),
        (redis_errors.ResponseError(" "), "ResponseError", ""),
    ],
)
def test_an_empty_message_is_replaced_by_the_class_name(
    err: Exception, evidence: str, hint: str
) -> None:
    out = store_error("commit to Redis failed", err)
    assert isinstance(out, StoreError) and out.__cause__ is err
    assert str(out).startswith(f"commit to Redis failed: {evidence}")
    assert hint in str(out)
    assert ": ;" not in str(out) and not str(out).endswith(": ")


def test_a_message_is_kept() -> None:
    err = redis_errors.ConnectionError("Error 111 connecting to 127.0.0.1:1. Connection refused.")
    out = store_error("cannot open the Redis store at redis://127.0.0.1:1/0", err)
    assert str(out) == (
        "cannot open the Redis store at redis://127.0.0.1:1/0: Error 111 connecting to "
        "127.0.0.1:1. Connection refused.; is redis-server running there? check host and port "
        "of the store URL"
    )

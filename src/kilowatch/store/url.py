"""Store URLs: which backend, where, and with which options.

- ``sqlite:///relative/file.db``, ``sqlite:////absolute/file.db`` (parent directories are created)
- ``redis://[[user]:password@]host:port[/db][?prefix=energy]``
- ``rediss://...`` (TLS) with ``?ca=/path/ca.pem&cert=/path/client.pem&key=/path/client.key``
  (also accepted under redis-py's names ``ssl_ca_certs``, ``ssl_certfile``, ``ssl_keyfile``) and
  ``verify=none|optional|required`` (default ``required``), ``check_hostname=true|false``
- a Redis Cluster when the URL lists several hosts: ``redis://h1:p1,h2:p2,h3:p3/0``
"""

from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import parse_qsl, unquote

from kilowatch.errors import StoreError

DEFAULT_PREFIX = "energy"
"""The seed's key prefix (``energy:<MAC>_<hour start>``)."""
DEFAULT_REDIS_PORT = 6379

_TLS_PARAMS = {
    "ca": "ssl_ca_certs",
    "ssl_ca_certs": "ssl_ca_certs",
    "cert": "ssl_certfile",
    "ssl_certfile": "ssl_certfile",
    "key": "ssl_keyfile",
    "ssl_keyfile": "ssl_keyfile",
    "verify": "ssl_cert_reqs",
    "ssl_cert_reqs": "ssl_cert_reqs",
    "check_hostname": "ssl_check_hostname",
    "ssl_check_hostname": "ssl_check_hostname",
}


@dataclass(frozen=True, slots=True)
class RedisTarget:
    """A parsed ``redis://`` / ``rediss://`` URL."""

    hosts: tuple[tuple[str, int], ...]
    db: int = 0
    username: str | None = None
    password: str | None = None
    tls: bool = False
    prefix: str = DEFAULT_PREFIX
    tls_options: dict[str, str | bool] = field(default_factory=dict)

    @property
    def cluster(self) -> bool:
        return len(self.hosts) > 1


def scheme_of(url: str) -> str:
    """The URL's scheme, or :class:`StoreError` naming the ones kilowatch knows."""
    scheme, sep, _ = url.partition("://")
    if not sep or scheme not in ("sqlite", "redis", "rediss"):
        raise StoreError(
            f"unknown store URL {url!r}: use sqlite:///path/file.db, redis://host:port/db, "
            "rediss://host:port/db or redis://host1:port1,host2:port2/0 for a cluster"
        )
    return scheme


def parse_redis(url: str) -> RedisTarget:
    """Parse a ``redis://`` or ``rediss://`` URL (see module docstring)."""
    scheme = scheme_of(url)
    if scheme == "sqlite":
        raise StoreError(f"not a Redis URL: {url!r}")
    rest = url.split("://", 1)[1]
    rest, _, query = rest.partition("?")
    netloc, _, path = rest.partition("/")
    username = password = None
    if "@" in netloc:
        auth, netloc = netloc.rsplit("@", 1)
        user, colon, pw = auth.partition(":")
        username = unquote(user) or None
        password = unquote(pw) if colon else None
    hosts = tuple(_host(h, url) for h in netloc.split(","))
    db = 0
    if path.strip("/"):
        try:
            db = int(path.strip("/"))
        except ValueError:
            raise StoreError(
                f"bad Redis URL {url!r}: the database must be a number, e.g. /0"
            ) from None
    if len(hosts) > 1 and db != 0:
        raise StoreError(f"bad Redis URL {url!r}: a Redis Cluster has only database 0")
    prefix = DEFAULT_PREFIX
    tls: dict[str, str | bool] = {}
    for name, value in parse_qsl(query, keep_blank_values=True):
        if name == "prefix":
            if not value or any(c in value for c in "{}*? "):
                raise StoreError(
                    f"bad Redis URL {url!r}: prefix must be non-empty, without {{}}*? "
                )
            prefix = value
        elif name in _TLS_PARAMS:
            key = _TLS_PARAMS[name]
            tls[key] = (
                value.lower() in ("1", "true", "yes") if key == "ssl_check_hostname" else value
            )
        else:
            raise StoreError(
                f"bad Redis URL {url!r}: unknown option {name!r} (known: prefix, ca, cert, key, "
                "verify, check_hostname)"
            )
    if tls and scheme != "rediss":
        raise StoreError(f"bad Redis URL {url!r}: TLS options need the rediss:// scheme")
    return RedisTarget(
        hosts=hosts,
        db=db,
        username=username,
        password=password,
        tls=scheme == "rediss",
        prefix=prefix,
        tls_options=tls,
    )


def _host(text: str, url: str) -> tuple[str, int]:
    host, colon, port = text.rpartition(":") if ":" in text else (text, "", "")
    host = host.strip("[]")
    if not host:
        raise StoreError(f"bad Redis URL {url!r}: missing host (e.g. redis://localhost:6379/0)")
    if not colon:
        return host, DEFAULT_REDIS_PORT
    try:
        number = int(port)
    except ValueError:
        raise StoreError(f"bad Redis URL {url!r}: port {port!r} is not a number") from None
    if not 0 < number < 65536:
        raise StoreError(f"bad Redis URL {url!r}: port {number} is out of range")
    return host, number


__all__ = ["DEFAULT_PREFIX", "RedisTarget", "parse_redis", "scheme_of"]

"""The ``KVS`` service: a small key-value store with the documented limits (shelly-api.md §15)."""

from __future__ import annotations

import fnmatch
import hashlib
import json
from typing import Any

import shellysim.rpcutil as r

KVS_KEY_MAX = 42
KVS_VALUE_MAX = 253
KVS_KEYS_MAX = 50
KVS_PAGE = 50


class Kvs:
    """Keys with JSON values, an ``etag`` per value and a global ``rev`` (``Sys.kvs_rev``)."""

    def __init__(self) -> None:
        self.items: dict[str, tuple[Any, str]] = {}
        self.rev = 0

    @staticmethod
    def _etag(value: Any) -> str:
        text = json.dumps(value, sort_keys=True, separators=(",", ":"))
        return hashlib.sha1(text.encode(), usedforsecurity=False).hexdigest()[:28]

    def _key(self, params: r.Params) -> str:
        key = r.get_str(params, "key")
        assert key is not None
        if not key or len(key) > KVS_KEY_MAX:
            raise r.invalid(f"Invalid argument 'key': length must be 1..{KVS_KEY_MAX}")
        return key

    def set(self, params: r.Params) -> dict[str, Any]:
        """``KVS.Set {key, value, etag?}`` → ``{"etag", "rev"}``."""
        key = self._key(params)
        if "value" not in params:
            raise r.missing("value")
        value = params["value"]
        size = len(value) if isinstance(value, str) else len(json.dumps(value))
        if size > KVS_VALUE_MAX:
            raise r.invalid(f"Invalid argument 'value': longer than {KVS_VALUE_MAX} characters")
        etag = params.get("etag")
        if etag is not None and (key not in self.items or self.items[key][1] != etag):
            raise r.precondition(f"etag mismatch for key '{key}'")
        if key not in self.items and len(self.items) >= KVS_KEYS_MAX:
            raise r.exhausted(f"Too many keys (max {KVS_KEYS_MAX})")
        new_etag = self._etag(value)
        self.items[key] = (value, new_etag)
        self.rev += 1
        return {"etag": new_etag, "rev": self.rev}

    def get(self, params: r.Params) -> dict[str, Any]:
        """``KVS.Get {key}`` → ``{"etag", "value"}``; a missing key is -105."""
        key = self._key(params)
        if key not in self.items:
            raise r.RpcCallError(r.NOT_FOUND, f"Key '{key}' not found!")
        value, etag = self.items[key]
        return {"etag": etag, "value": value}

    def _matching(self, params: r.Params) -> list[str]:
        match = r.get_str(params, "match", required=False) or "*"
        return sorted(k for k in self.items if fnmatch.fnmatchcase(k, match))

    def get_many(self, params: r.Params) -> dict[str, Any]:
        """``KVS.GetMany {match?, offset?}`` → ``{"items": [...], "offset", "total"}``."""
        keys = self._matching(params)
        offset = r.get_int(params, "offset", 0)
        page = keys[offset : offset + KVS_PAGE]
        items = [{"key": k, "etag": self.items[k][1], "value": self.items[k][0]} for k in page]
        return {"items": items, "offset": offset, "total": len(keys)}

    def list(self, params: r.Params) -> dict[str, Any]:
        """``KVS.List {match?}`` → ``{"keys": {key: {"etag"}}, "rev"}``."""
        return {
            "keys": {k: {"etag": self.items[k][1]} for k in self._matching(params)},
            "rev": self.rev,
        }

    def delete(self, params: r.Params) -> dict[str, Any]:
        """``KVS.Delete {key, etag?}`` → ``{"rev"}``."""
        key = self._key(params)
        if key not in self.items:
            raise r.RpcCallError(r.NOT_FOUND, f"Key '{key}' not found!")
        etag = params.get("etag")
        if etag is not None and self.items[key][1] != etag:
            raise r.precondition(f"etag mismatch for key '{key}'")
        del self.items[key]
        self.rev += 1
        return {"rev": self.rev}

    def clear(self) -> None:
        """Factory reset."""
        self.items.clear()
        self.rev += 1

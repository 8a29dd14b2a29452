"""Digest authentication as Shelly Gen2+ devices do it (RFC 7616, SHA-256; shelly-api.md §5).

User is always ``admin``, the realm is the device id, the device stores only
``ha1 = sha256("admin:<realm>:<password>")``. Nonces are decimal unix times; one stays valid for an
hour (fw 2.0 behaviour), which also accepts aioshelly's pre-computed WebSocket nonce.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from typing import Any

AUTH_USER = "admin"
NONCE_LIFETIME_S = 3600
WS_HA2 = hashlib.sha256(b"dummy_method:dummy_uri").hexdigest()

_PARAM = re.compile(r'(\w+)\s*=\s*(?:"([^"]*)"|([^\s,]+))')


def sha256_hex(text: str) -> str:
    """Hex SHA-256 of ``text``."""
    return hashlib.sha256(text.encode()).hexdigest()


def ha1_for(realm: str, password: str) -> str:
    """The ``ha1`` that ``Shelly.SetAuth`` takes for ``password``."""
    return sha256_hex(f"{AUTH_USER}:{realm}:{password}")


def new_nonce() -> int:
    """A fresh nonce (a unix time, as the firmware issues them)."""
    return int(time.time())


def _nonce_ok(nonce: Any) -> bool:
    try:
        value = int(str(nonce))
    except ValueError:
        return False
    now = time.time()
    return now - NONCE_LIFETIME_S <= value <= now + 60


def challenge_header(realm: str) -> str:
    """``WWW-Authenticate`` value of an HTTP 401 (captured header shape)."""
    return f'Digest qop="auth", realm="{realm}", nonce="{new_nonce()}", algorithm=SHA-256'


def ws_challenge(realm: str) -> str:
    """The ``message`` of a WebSocket 401 error: a JSON *string* describing the challenge."""
    return json.dumps(
        {
            "auth_type": "digest",
            "nonce": new_nonce(),
            "nc": 1,
            "realm": realm,
            "algorithm": "SHA-256",
        }
    )


def check_http(header: str | None, method: str, ha1: str, realm: str) -> bool:
    """Whether an ``Authorization: Digest ...`` header is valid for this request."""
    if not header or not header.lower().startswith("digest "):
        return False
    fields = {
        m.group(1).lower(): m.group(2) or m.group(3) or "" for m in _PARAM.finditer(header[7:])
    }
    if fields.get("username") != AUTH_USER or fields.get("realm") != realm:
        return False
    if fields.get("algorithm", "SHA-256").upper() != "SHA-256" or not _nonce_ok(
        fields.get("nonce")
    ):
        return False
    ha2 = sha256_hex(f"{method}:{fields.get('uri', '')}")
    qop = fields.get("qop", "auth")
    expected = sha256_hex(
        f"{ha1}:{fields.get('nonce')}:{fields.get('nc', '')}:{fields.get('cnonce', '')}:{qop}:{ha2}"
    )
    return expected == fields.get("response")


def check_frame(auth: Any, ha1: str, realm: str) -> bool:
    """Whether a frame's ``auth`` object (WebSocket / POST /rpc) is valid."""
    if not isinstance(auth, dict):
        return False
    if auth.get("username") != AUTH_USER or auth.get("realm") != realm:
        return False
    if str(auth.get("algorithm", "SHA-256")).upper() != "SHA-256":
        return False
    if not _nonce_ok(auth.get("nonce")):
        return False
    nc = auth.get("nc", 1)
    expected = sha256_hex(f"{ha1}:{auth.get('nonce')}:{nc}:{auth.get('cnonce')}:auth:{WS_HA2}")
    return expected == auth.get("response")


EXEMPT_METHODS = frozenset({"shelly.getdeviceinfo"})
"""Methods that never need auth (§5)."""

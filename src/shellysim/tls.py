"""TLS material a device stores (``Shelly.PutUserCA``, ``PutTLSClientCert``, ``PutTLSClientKey``).

Uploads arrive in chunks (``append``); once the buffer holds complete PEM blocks they are validated
with ``cryptography`` against the device's documented constraints (shelly-api.md §16): certificates
parse, keys are unencrypted RSA or EC (no Ed25519).
"""

from __future__ import annotations

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import load_pem_private_key

import shellysim.rpcutil as r

TLS_MAX_BYTES = 16384
"""Largest bundle accepted (the real limit is undocumented)."""

KINDS = {"user_ca": "user_ca.pem", "client_cert": "client.crt", "client_key": "client.key"}


def _complete(data: str) -> bool:
    body = data.rstrip()
    return body.endswith("-----") and "-----END " in body[-80:]


def validate(kind: str, data: str) -> None:
    """Raise -103 if complete PEM ``data`` is not acceptable for ``kind``."""
    try:
        if kind == "client_key":
            key = load_pem_private_key(data.encode(), password=None)
            if not isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
                raise r.invalid("Unsupported key type: only RSA and ECDSA keys are supported")
        else:
            certs = x509.load_pem_x509_certificates(data.encode())
            if not certs:
                raise r.invalid("No certificate found")
    except r.RpcCallError:
        raise
    except (ValueError, TypeError) as err:
        raise r.invalid(f"Invalid PEM data: {err}") from err


class TlsStore:
    """The three PEM files a device can hold, as uploaded."""

    def __init__(self) -> None:
        self.files: dict[str, str] = {}

    def put(self, kind: str, params: r.Params) -> dict[str, int]:
        """One ``Put*`` call: replace or append, ``data: null`` deletes; returns ``{"len"}``."""
        data = params.get("data")
        append = r.get_bool(params, "append", False)
        if data is None:
            self.files.pop(kind, None)
            return {"len": 0}
        if not isinstance(data, str):
            raise r.invalid("Invalid argument 'data': expected string")
        text = (self.files.get(kind, "") if append else "") + data
        if len(text.encode()) > TLS_MAX_BYTES:
            raise r.exhausted(f"{KINDS[kind]} too large (max {TLS_MAX_BYTES} bytes)")
        if _complete(text):
            try:
                validate(kind, text)
            except r.RpcCallError:
                self.files.pop(kind, None)
                raise
        self.files[kind] = text
        return {"len": len(text.encode())}

    def get(self, kind: str) -> str | None:
        """The stored PEM text if complete and valid, else ``None``."""
        text = self.files.get(kind)
        if text is None or not _complete(text):
            return None
        return text

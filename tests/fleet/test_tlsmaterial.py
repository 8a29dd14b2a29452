"""TLS material: the checks devices need (key types, encryption, chain order, dates), DER input,
and the chunked upload to a simulated device, whose second run changes nothing."""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from kilowatch.errors import FleetError, RpcCallError
from kilowatch.fleet.rpc.base import ShellyRpc
from kilowatch.fleet.tlsmaterial import (
    TLS_KVS_KEY,
    TlsMaterial,
    ensure_material,
    load_material,
    material_on_device,
    upload_material,
)
from shellysim import Fleet
from shellysim.device import Device

from .pem import NOW, Pki, issue, key_pem, new_key, pki
from .simrpc import Recording, lan_rpc


@pytest.fixture
async def fleet() -> AsyncIterator[Fleet]:
    async with Fleet(devices=1, models=["pm1"], speed=1, engine=None, tick_s=0.05) as f:
        yield f


@pytest.fixture
async def device(fleet: Fleet) -> AsyncIterator[tuple[ShellyRpc, Recording, Device]]:
    dev = fleet.devices[0]
    async with lan_rpc(fleet, dev) as (rpc, recording):
        yield rpc, recording, dev


@pytest.fixture(scope="module")
def ec_pki() -> Pki:
    return pki("ec")


@pytest.fixture(scope="module")
def rsa_pki() -> Pki:
    return pki("rsa")


def load(p: Pki, **over: object) -> TlsMaterial:
    parts: dict[str, object] = {"ca": p.root.pem, "cert": p.chain, "key": p.key, **over}
    return load_material(now=NOW, **parts)  # type: ignore[arg-type]


@pytest.mark.parametrize("kind", ["rsa", "ec"])
async def test_valid_material_uploads_then_second_run_changes_nothing(
    kind: str,
    rsa_pki: Pki,
    ec_pki: Pki,
    device: tuple[ShellyRpc, Recording, Device],
    caplog: pytest.LogCaptureFixture,
) -> None:
    rpc, transport, dev = device
    p = rsa_pki if kind == "rsa" else ec_pki
    material = load(p)
    assert material.cert == p.chain and material.ca == p.root.pem
    assert material.key is not None and material.key.startswith("-----BEGIN PRIVATE KEY-----")
    assert await material_on_device(rpc) is None
    caplog.set_level(logging.DEBUG)
    steps = await upload_material(rpc, material)
    assert [s.split(":")[0] for s in steps] == [
        "Shelly.PutUserCA",
        "Shelly.PutTLSClientCert",
        "Shelly.PutTLSClientKey",
        f"KVS.Set {TLS_KVS_KEY} = {material.sha256[:12]}",
    ]
    # The simulator checked the complete PEM with cryptography and keeps it as sent.
    assert dev.tls.get("user_ca") == material.ca
    assert dev.tls.get("client_cert") == material.cert
    assert dev.tls.get("client_key") == material.key
    chunks = sum(len(t) // 1024 + (len(t) % 1024 > 0) for t in (p.root.pem, p.chain, p.key))
    puts = [m for m in transport.sent if m.startswith("Shelly.Put")]
    assert len(puts) == chunks >= 3
    if kind == "rsa":  # an RSA chain is longer than one 1024-character chunk
        assert chunks > 3 and transport.sent.count("Shelly.PutTLSClientCert") > 1
    assert await material_on_device(rpc) == material.sha256
    ours = "\n".join(r.getMessage() for r in caplog.records if r.name.startswith("kilowatch"))
    assert "uploaded" in ours and "PRIVATE KEY" not in ours and material.key not in ours

    sent = len(transport.sent)
    assert await ensure_material(rpc, load(p)) == []
    assert transport.sent[sent:] == ["KVS.Get"]
    # Another key and cert: uploaded again, the stale record removed first.
    other = load(rsa_pki if kind == "ec" else ec_pki)
    steps = await ensure_material(rpc, other)
    assert steps[0] == f"KVS.Delete {TLS_KVS_KEY}" and len(steps) == 5
    assert await material_on_device(rpc) == other.sha256 != material.sha256


async def test_ca_only_and_files_in_der(tmp_path: Path, ec_pki: Pki) -> None:
    (tmp_path / "ca.der").write_bytes(ec_pki.root.der)
    (tmp_path / "leaf.der").write_bytes(ec_pki.leaf.der)
    (tmp_path / "key.der").write_bytes(
        key_pem(ec_pki.leaf.key, encoding=serialization.Encoding.DER)
    )
    ca_only = load_material(ca=tmp_path / "ca.der", now=NOW)
    assert ca_only == TlsMaterial(ca=ec_pki.root.pem)
    single = load_material(cert=str(tmp_path / "leaf.der"), key=tmp_path / "key.der", now=NOW)
    assert single.cert == ec_pki.leaf.pem and single.key == ec_pki.key
    # The same material from PEM (PKCS#1/SEC1 "EC PRIVATE KEY") hashes the same.
    sec1 = key_pem(ec_pki.leaf.key, fmt=serialization.PrivateFormat.TraditionalOpenSSL)
    assert sec1.startswith(b"-----BEGIN EC PRIVATE KEY-----")
    assert load_material(cert=ec_pki.leaf.pem, key=sec1, now=NOW).sha256 == single.sha256


def test_repr_shows_hashes_only(ec_pki: Pki) -> None:
    material = load(ec_pki)
    text = repr(material)
    assert "BEGIN" not in text and "MII" not in text and str(material) == text
    assert text.startswith("TlsMaterial(ca=<1 CA certificate(s) sha256:")
    assert "cert=<chain of 2 sha256:" in text and "key=<private key sha256:" in text


def expect(problem: str, **parts: object) -> FleetError:
    with pytest.raises(FleetError) as info:
        load_material(now=NOW, **parts)  # type: ignore[arg-type]
    assert problem in str(info.value), str(info.value)
    return info.value


def test_key_types_refused(ec_pki: Pki) -> None:
    ed = issue("ed leaf", key=new_key("ed25519"), issuer=ec_pki.intermediate)
    expect(
        "certificate 1 (CN=ed leaf) uses Ed25519, which Shelly devices do not support",
        cert=ed.pem + ec_pki.intermediate.pem,
        key=key_pem(ed.key),
    )
    expect(
        "the private key uses Ed25519, which Shelly devices do not support; use ECDSA P-256",
        cert=ec_pki.chain,
        key=key_pem(new_key("ed25519")),
    )
    weak = issue("weak", key=new_key("rsa1024"), issuer=ec_pki.intermediate)
    expect("is RSA-1024; devices take RSA keys of 2048 bits", cert=weak.pem, key=key_pem(weak.key))
    k1 = issue("k1", key=new_key("k256"), issuer=ec_pki.intermediate)
    expect("on EC curve secp256k1; devices take P-256, P-384 or P-521", cert=k1.pem, key="x")
    p384 = issue("p384", key=new_key("p384"), issuer=ec_pki.intermediate)
    assert load_material(cert=p384.pem, key=key_pem(p384.key), now=NOW).cert == p384.pem


def test_encrypted_keys_refused(ec_pki: Pki, rsa_pki: Pki) -> None:
    pkcs8 = key_pem(ec_pki.leaf.key, password=b"pw")
    assert pkcs8.startswith(b"-----BEGIN ENCRYPTED PRIVATE KEY-----")
    expect("the private key is encrypted", ca=ec_pki.root.pem, cert=ec_pki.chain, key=pkcs8)
    legacy = key_pem(
        rsa_pki.leaf.key, fmt=serialization.PrivateFormat.TraditionalOpenSSL, password=b"pw"
    )
    assert b"Proc-Type: 4,ENCRYPTED" in legacy
    expect("the private key is encrypted", cert=rsa_pki.chain, key=legacy)
    der = key_pem(ec_pki.leaf.key, password=b"pw", encoding=serialization.Encoding.DER)
    expect("the private key is encrypted", cert=ec_pki.chain, key=der)


def test_chain_order_and_shape(ec_pki: Pki) -> None:
    p = ec_pki
    err = expect(
        "out of order: certificate 2 (CN=shellypmminig3-aabbccddeeff) is the client certificate",
        cert=p.intermediate.pem + p.leaf.pem,
        key=p.key,
    )
    assert err.subject == "client certificate (given as PEM text)"
    expect(
        "certificate 3 (CN=Test Root) is self-signed (a root)",
        cert=p.chain + p.root.pem,
        key=p.key,
    )
    expect(
        "certificate 1 (CN=Test Root) is a CA certificate; the client certificate (the leaf)",
        cert=p.root.pem,
        key=key_pem(p.root.key),
    )
    alone = issue("self", key=p.leaf.key)
    expect("certificate 1 (CN=self) is self-signed", cert=alone.pem, key=p.key)
    stranger = issue("Other Intermediate", issuer=p.root, ca=True)
    expect(
        "certificate 1 (CN=shellypmminig3-aabbccddeeff) is not signed by certificate 2 "
        "(CN=Other Intermediate)",
        cert=p.leaf.pem + stranger.pem,
        key=p.key,
    )
    # Nine intermediates are one too many.
    cas = [issue("I0", issuer=p.root, ca=True)]
    for n in range(1, 9):
        cas.append(issue(f"I{n}", issuer=cas[-1], ca=True))
    leaf = issue("deep", issuer=cas[-1])
    chain = leaf.pem + "".join(c.pem for c in reversed(cas))
    expect(
        "the chain has 9 intermediates; devices take at most 8", cert=chain, key=key_pem(leaf.key)
    )
    eight = leaf.pem + "".join(c.pem for c in reversed(cas[1:]))
    assert load_material(cert=eight, key=key_pem(leaf.key), now=NOW).cert == eight


def test_key_must_match_leaf(ec_pki: Pki, rsa_pki: Pki) -> None:
    err = expect(
        "the private key does not belong to the client certificate",
        cert=ec_pki.chain,
        key=key_pem(new_key("ec")),
    )
    assert err.subject == "private key (given inline)"
    expect("their public keys differ", cert=rsa_pki.chain, key=ec_pki.key)
    expect("a client certificate was given without its key", cert=ec_pki.chain)
    expect("a key was given without its certificate", key=ec_pki.key)


def test_dates(ec_pki: Pki) -> None:
    old = issue(
        "old",
        issuer=ec_pki.intermediate,
        not_before=dt.datetime(2024, 1, 1, tzinfo=dt.UTC),
        not_after=dt.datetime(2025, 1, 1, tzinfo=dt.UTC),
    )
    expect(
        "certificate 1 (CN=old) expired on 2025-01-01 00:00:00 UTC (valid 2024-01-01 00:00:00 "
        "UTC to 2025-01-01 00:00:00 UTC, now 2026-12-07 12:00:00 UTC); renew it",
        cert=old.pem + ec_pki.intermediate.pem,
        key=key_pem(old.key),
    )
    future = issue("future", ca=True, not_before=NOW + dt.timedelta(days=2))
    expect("is not valid before 2026-12-09 12:00:00 UTC", ca=future.pem)
    # The same old certificate was fine when it was valid.
    then = dt.datetime(2024, 6, 1, tzinfo=dt.UTC)
    inter_then = issue("I", issuer=ec_pki.root, ca=True, not_before=then - dt.timedelta(1))
    leaf_then = issue("L", issuer=inter_then, not_before=then - dt.timedelta(1))
    assert load_material(cert=leaf_then.pem, key=key_pem(leaf_then.key), now=then).cert


def test_garbage_and_files(tmp_path: Path, ec_pki: Pki) -> None:
    junk = tmp_path / "junk.pem"
    junk.write_bytes(b"\x00\x01 this is not a certificate")
    err = expect("is not a certificate: no PEM block", ca=junk)
    assert err.subject == str(junk)
    expect("is not a private key: no PEM block and not DER", cert=ec_pki.chain, key=junk)
    expect("cannot read the CA bundle file: No such file", ca=tmp_path / "missing.pem")
    broken = ec_pki.root.pem.replace("MII", "XXX", 1)
    expect("certificate 1 does not parse", ca=broken)
    expect("holds a private key (PRIVATE KEY)", ca=ec_pki.root.pem + ec_pki.key)
    expect("holds a certificate too", cert=ec_pki.chain, key=ec_pki.key + ec_pki.leaf.pem)
    expect("is not a CA certificate", ca=ec_pki.leaf.pem)
    expect("nothing given")


async def test_refused_material_sends_nothing(
    device: tuple[ShellyRpc, Recording, Device], ec_pki: Pki
) -> None:
    rpc, transport, dev = device
    for bad in (
        {"key": key_pem(ec_pki.leaf.key, password=b"pw")},
        {"cert": ec_pki.intermediate.pem + ec_pki.leaf.pem},
        {"key": key_pem(new_key("ec"))},
    ):
        with pytest.raises(FleetError):
            await upload_material(rpc, load(ec_pki, **bad))
    assert transport.sent == [] and dev.tls.files == {}


async def test_device_refusal_leaves_no_record(
    device: tuple[ShellyRpc, Recording, Device], ec_pki: Pki
) -> None:
    rpc, _, _ = device
    await upload_material(rpc, load(ec_pki))
    # Material that skipped load_material's checks: the device refuses the key and the old
    # record is already gone, so the next apply uploads again instead of trusting it.
    forged = TlsMaterial(ca=ec_pki.root.pem, key=key_pem(new_key("ed25519")).decode())
    with pytest.raises(RpcCallError) as info:
        await upload_material(rpc, forged)
    assert info.value.code == -103 and info.value.method == "Shelly.PutTLSClientKey"
    assert await material_on_device(rpc) is None


async def test_no_key_material_in_any_log_at_debug(
    device: tuple[ShellyRpc, Recording, Device], ec_pki: Pki, caplog: pytest.LogCaptureFixture
) -> None:
    rpc, _, _ = device
    caplog.set_level(logging.DEBUG)
    await upload_material(rpc, load(ec_pki))
    assert "PRIVATE KEY" not in caplog.text

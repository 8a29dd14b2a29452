"""Every recorded payload is indexed and decodes cleanly (the simulator tests reuse them)."""

from __future__ import annotations

from kilowatch.decode import DecoderState, default_registry


def test_every_fixture_file_is_indexed(fixture_index):
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "fixtures"
    files = {
        str(p.relative_to(root))
        for p in root.rglob("*")
        if p.is_file() and p.name not in ("index.json", "README.md")
    }
    assert files == set(fixture_index)


def test_every_fixture_decodes(fixture_index, recorded):
    registry = default_registry()
    kinds: set[str] = set()
    for name in fixture_index:
        topic, payload, received_at = recorded(name)
        messages = registry.decode(topic, payload, received_at=received_at, state=DecoderState())
        kinds.update(m.kind for m in messages)
        for message in messages:
            shape = message.to_json()
            assert None not in shape.values(), name
    assert kinds == {"reading", "interval", "availability", "event", "device_info", "log"}

"""What the decoders remember between messages: the last known status of each device's components.

Shelly ``NotifyStatus`` frames carry only the fields that changed ("overlay the changes over a known
status", shelly-api.md §9.1); the decoder merges them onto the last known status of the component
so that the result equals a fresh ``GetStatus``. A ``null`` in a delta means the key is gone.
"""

from __future__ import annotations

from typing import Any


def merge_status(dest: dict[str, Any], delta: dict[str, Any]) -> None:
    """Deep-merge ``delta`` into ``dest`` in place; a ``None`` value removes the key.

    Like aioshelly's ``mergedicts``, only plain ``dict`` values are merged recursively; anything
    else (lists such as ``by_minute``, numbers, strings) replaces the old value.
    """
    for key, value in delta.items():
        if value is None:
            dest.pop(key, None)
        elif type(value) is dict:
            target = dest.get(key)
            if type(target) is dict:
                merge_status(target, value)
            else:
                dest[key] = without_nulls(value)
        else:
            dest[key] = value


def without_nulls(status: dict[str, Any]) -> dict[str, Any]:
    """``status`` without ``None`` values, recursively (a fresh subtree carries no removals)."""
    out: dict[str, Any] = {}
    for key, value in status.items():
        if value is None:
            continue
        out[key] = without_nulls(value) if type(value) is dict else value
    return out


class DecoderState:
    """Last known status per (device, component), owned by whoever feeds one stream of messages.

    Not thread-safe; one intake owns one state. It holds only components that decoders need to merge
    (metering components), so its size is bounded by the number of metered channels in the fleet.
    """

    __slots__ = ("_devices", "_status")

    def __init__(self) -> None:
        # device → component key → status; per device so that a full status forgets in O(1)
        self._status: dict[str, dict[str, dict[str, Any]]] = {}
        self._devices: dict[str, str] = {}

    def learn_device(self, prefix: str, device: str) -> None:
        """Remember that topic prefix ``prefix`` belongs to ``device`` (its frames' ``src``)."""
        if self._devices.get(prefix) != device:
            self._devices[prefix] = device

    def device_for(self, prefix: str) -> str:
        """The device id last seen behind topic prefix ``prefix``; the prefix itself if none yet."""
        return self._devices.get(prefix, prefix)

    def get(self, device: str, component: str) -> dict[str, Any] | None:
        """The last known status of ``component`` on ``device`` (do not modify it), or ``None``."""
        known = self._status.get(device)
        return None if known is None else known.get(component)

    def merge(self, device: str, component: str, delta: dict[str, Any] | None) -> dict[str, Any]:
        """Overlay a ``NotifyStatus`` delta and return the merged status (``None`` forgets it)."""
        known = self._status.get(device)
        if known is None:
            if delta is None:
                return {}
            known = self._status[device] = {}
        if delta is None:
            known.pop(component, None)
            return {}
        current = known.get(component)
        if current is None:
            current = known[component] = without_nulls(delta)
        else:
            merge_status(current, delta)
        return current

    def replace(self, device: str, component: str, status: dict[str, Any]) -> dict[str, Any]:
        """Store a complete component status (``status/<key>`` topic, ``NotifyFullStatus``)."""
        clean = without_nulls(status)
        self._status.setdefault(device, {})[component] = clean
        return clean

    def forget(self, device: str) -> None:
        """Drop everything known about ``device`` (a full status replaces all of its components)."""
        self._status.pop(device, None)

    def components(self, device: str) -> list[str]:
        """The component keys known for ``device``."""
        return list(self._status.get(device, ()))

    def __len__(self) -> int:
        """How many (device, component) statuses are known."""
        return sum(len(known) for known in self._status.values())

"""RPC errors and parameter checks, worded as Shelly firmware words them (shelly-api.md §2.4)."""

from __future__ import annotations

from typing import Any

from shellysim.errors import RpcCallError as RpcCallError

INVALID_ARGUMENT = -103
DEADLINE_EXCEEDED = -104
NOT_FOUND = -105
RESOURCE_EXHAUSTED = -108
FAILED_PRECONDITION = -109
UNAVAILABLE = -114
NO_HANDLER = 404
UNAUTHORIZED = 401

Params = dict[str, Any]


def invalid(message: str) -> RpcCallError:
    """-103 INVALID_ARGUMENT."""
    return RpcCallError(INVALID_ARGUMENT, message)


def missing(name: str) -> RpcCallError:
    """-103 ``Missing required '<name>'`` (doc wording)."""
    return invalid(f"Missing required '{name}'")


def id_not_found(value: Any) -> RpcCallError:
    """-105 ``Argument 'id', value N not found!`` (real firmware wording)."""
    return RpcCallError(NOT_FOUND, f"Argument 'id', value {value} not found!")


def exhausted(message: str) -> RpcCallError:
    """-108 RESOURCE_EXHAUSTED."""
    return RpcCallError(RESOURCE_EXHAUSTED, message)


def precondition(message: str) -> RpcCallError:
    """-109 FAILED_PRECONDITION."""
    return RpcCallError(FAILED_PRECONDITION, message)


def no_handler(method: str) -> RpcCallError:
    """404 ``No handler for <Method>`` for an unknown method."""
    return RpcCallError(NO_HANDLER, f"No handler for {method}")


def get_int(
    params: Params, name: str, default: int | None = None, *, required: bool = False
) -> int:
    """An integer parameter (bools are not integers here)."""
    if name not in params or params[name] is None:
        if required or default is None:
            raise missing(name)
        return default
    value = params[name]
    if isinstance(value, bool) or not isinstance(value, int | float) or int(value) != value:
        raise invalid(f"Invalid argument '{name}': expected number, got {value!r}")
    return int(value)


def get_bool(params: Params, name: str, default: bool | None = None) -> bool:
    """A boolean parameter."""
    if name not in params or params[name] is None:
        if default is None:
            raise missing(name)
        return default
    value = params[name]
    if not isinstance(value, bool):
        raise invalid(f"Invalid argument '{name}': expected boolean, got {value!r}")
    return value


def get_str(params: Params, name: str, *, required: bool = True) -> str | None:
    """A string parameter (``None`` when optional and absent or null)."""
    value = params.get(name)
    if value is None:
        if required:
            raise missing(name)
        return None
    if not isinstance(value, str):
        raise invalid(f"Invalid argument '{name}': expected string, got {value!r}")
    return value


def get_obj(params: Params, name: str) -> dict[str, Any]:
    """A required object parameter (``config`` of SetConfig)."""
    value = params.get(name)
    if value is None:
        raise missing(name)
    if not isinstance(value, dict):
        raise invalid(f"Invalid argument '{name}': expected object, got {value!r}")
    return value


def merge_config(current: dict[str, Any], patch: dict[str, Any], path: str = "") -> bool:
    """Merge ``patch`` into ``current`` in place, SetConfig-style; returns whether anything changed.

    Omitted keys stay; ``null`` sets a field to null; nested objects merge recursively; keys the
    component does not have are ignored (as firmware does); a value of the wrong type is -103.
    """
    changed = False
    for key, value in patch.items():
        if key not in current:
            continue
        old = current[key]
        where = f"{path}{key}"
        if isinstance(old, dict):
            if not isinstance(value, dict):
                raise invalid(f"Invalid argument '{where}': expected object")
            changed |= merge_config(old, value, f"{where}.")
            continue
        if value is not None and old is not None and not _same_kind(old, value):
            raise invalid(
                f"Invalid argument '{where}': expected {type(old).__name__}, got {value!r}"
            )
        if old != value or type(old) is not type(value):
            current[key] = value
            changed = True
    return changed


def _same_kind(old: Any, new: Any) -> bool:
    if isinstance(old, bool) or isinstance(new, bool):
        return isinstance(old, bool) and isinstance(new, bool)
    if isinstance(old, int | float):
        return isinstance(new, int | float)
    return isinstance(new, type(old))

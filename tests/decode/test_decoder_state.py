"""DecoderState and the deep merge of NotifyStatus deltas (null removes a key)."""

from __future__ import annotations

from kilowatch.decode import DecoderState
from kilowatch.decode.state import merge_status, without_nulls


def test_merge_is_deep_and_null_removes():
    dest = {"apower": 1.0, "aenergy": {"total": 5.0, "by_minute": [1, 2, 3]}, "temp": {"tC": 40}}
    merge_status(
        dest,
        {
            "apower": 2.0,
            "aenergy": {"by_minute": [4]},
            "temp": None,
            "errors": ["overtemp"],
            "new": {"a": None, "b": {"c": 1, "d": None}},
        },
    )
    assert dest == {
        "apower": 2.0,
        "aenergy": {"total": 5.0, "by_minute": [4]},
        "errors": ["overtemp"],
        "new": {"b": {"c": 1}},
    }


def test_merge_replaces_a_non_dict_with_a_dict():
    dest = {"x": 1}
    merge_status(dest, {"x": {"y": 2, "z": None}})
    assert dest == {"x": {"y": 2}}


def test_null_for_a_missing_key_is_harmless():
    dest = {"a": 1}
    merge_status(dest, {"b": None})
    assert dest == {"a": 1}


def test_without_nulls_copies():
    src = {"a": None, "b": {"c": None, "d": 1}}
    out = without_nulls(src)
    assert out == {"b": {"d": 1}}
    assert src == {"a": None, "b": {"c": None, "d": 1}}


def test_state_merge_replace_forget():
    state = DecoderState()
    assert state.get("d", "pm1:0") is None
    assert state.merge("d", "pm1:0", {"apower": 1, "voltage": None}) == {"apower": 1}
    assert state.merge("d", "pm1:0", {"voltage": 230}) == {"apower": 1, "voltage": 230}
    state.replace("d", "em:0", {"a_act_power": 5, "n_current": None})
    assert state.get("d", "em:0") == {"a_act_power": 5}
    state.merge("e", "pm1:0", {"apower": 3})
    assert sorted(state.components("d")) == ["em:0", "pm1:0"]
    assert len(state) == 3
    state.merge("d", "pm1:0", None)
    assert state.components("d") == ["em:0"]
    state.forget("d")
    assert state.components("d") == [] and len(state) == 1

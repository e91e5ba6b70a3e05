"""Settings parsing and the documentation of every setting."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from diffill.server import protocol


def test_every_setting_is_in_the_readme_table():
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    documented = set(re.findall(r"^\| `(\w+)` \|", readme, flags=re.M))
    fields = {f.name for f in dataclasses.fields(protocol.Settings)}
    assert fields <= documented, f"undocumented settings: {fields - documented}"


def test_settings_accept_a_wrapped_section_and_report_bad_values():
    s, problems = protocol.parse_settings({"diffill": {"maxTokens": 32, "schedule": "fixed",
                                                "enable": {"*": False, "python": True}}})
    assert problems == []
    assert s.maxTokens == 32 and s.schedule == "fixed"
    assert s.enabled_for("python") and not s.enabled_for("markdown")
    s, problems = protocol.parse_settings({"maxTokens": 0, "threshold": 1.5, "debounceMs": "x",
                                    "model": 3, "bogus": True, "steps": 4})
    assert s.maxTokens == 64 and s.threshold == 0.9 and s.debounceMs is None and s.model is None
    assert s.steps == 4
    assert len(problems) == 5 and any("bogus" in p for p in problems)


def test_a_clients_own_keys_in_the_section_are_not_errors():
    # VS Code synchronises the whole "diffill" section, its own keys included.
    s, problems = protocol.parse_settings({"diffill": {"serverPath": "/x/diffill", "maxTokens": 8,
                                                "languages": ["python"],
                                                "trace": {"server": "verbose"}}})
    assert problems == [] and s.maxTokens == 8
    _, problems = protocol.parse_settings({"serverpath": "/x"})
    assert problems == ["unknown setting 'serverpath'"]


def test_changes_keep_earlier_values():
    first, _ = protocol.parse_settings({"maxTokens": 16})
    second, _ = protocol.parse_settings({"schedule": "blocks"}, base=first)
    assert second.maxTokens == 16 and second.schedule == "blocks"


def test_default_socket_is_per_user(monkeypatch, tmp_path):
    monkeypatch.delenv(protocol.ENV_SOCKET, raising=False)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    assert protocol.default_socket() == tmp_path / "diffill" / "daemon.sock"
    monkeypatch.setenv(protocol.ENV_SOCKET, "/x/y.sock")
    assert protocol.default_socket() == Path("/x/y.sock")


def test_the_wire_format_round_trips_settings_requests_and_results_through_json():
    import json
    from dataclasses import replace

    from diffill.infill import (Completion, ContextBudget, InfillRequest, InfillResult,
                                InfillSettings, with_overrides)
    from diffill.infill import wire as W
    s = replace(with_overrides(InfillSettings(), max_tokens=8, lengths=(4, 8), schedule="fixed",
                               seed=3, cache="dual", hide_unknown_names=False),
                budget=ContextBudget(100, 50, 7))
    trip = lambda obj: json.loads(json.dumps(obj))  # noqa: E731 - what the socket does
    assert W.settings_from_wire(trip(W.settings_to_wire(s))) == s
    r = InfillRequest("abc", 1, 2, "rewrite", "python", "/x.py", (("a.py", "x"),),
                      drafts=("bc",), draft_support=(5,))
    assert W.request_from_wire(trip(W.request_to_wire(r))) == r
    res = InfillResult([Completion("x", 1, 2, 0.5, True, 3, False, ("zz",))], "rewrite", 4, 0.1,
                       [1], withheld=2, withheld_by={"floor": 2})
    assert W.result_from_wire(trip(W.result_to_wire(res))) == res
    # Flat, partial and strict: a field left out keeps its default, a wrong type is an error.
    assert W.settings_from_wire({"cache": "dual", "prefix_tokens": 9}) == replace(
        with_overrides(InfillSettings(), cache="dual"), budget=ContextBudget(prefix_tokens=9))
    for bad in ({"max_tokens": "8"}, {"max_tokens": True}, {"maxTokens": 8}, [1],
                {"schedule": "Fixed"}, {"lengths": [0]}):
        with pytest.raises(W.WireError, match="malformed settings"):
            W.settings_from_wire(bad)
    for bad in ({}, {"text": "x", "start": "0"}, {"text": "x", "start": 0, "extra": [[1, 2]]},
                {"text": "x", "start": 0, "spare": 1},
                {"text": "x", "start": 0, "drafts": ["y"], "draft_support": ["5"]}):
        with pytest.raises(W.WireError, match="malformed infill request"):
            W.request_from_wire(bad)


def test_numeric_settings_have_upper_bounds_reported_with_the_bound():
    from diffill.server.protocol import UPPER, Settings, parse_settings
    s, problems = parse_settings({"debounceMs": 10**9, "maxTokens": 100000, "ensemble": 3})
    assert s.debounceMs == Settings().debounceMs and s.maxTokens == Settings().maxTokens
    assert s.ensemble == 3
    assert any("debounceMs" in p and f"at most {UPPER['debounceMs']}" in p for p in problems)
    assert any("maxTokens" in p for p in problems) and len(problems) == 2


def test_debounce_is_adaptive_by_default_and_fixed_when_set():
    settings, problems = protocol.parse_settings({"debounceMs": None})
    assert settings.debounceMs is None and not problems
    settings, problems = protocol.parse_settings({"debounceMs": 250})
    assert settings.debounceMs == 250 and not problems
    settings, problems = protocol.parse_settings({"debounceMs": 3000})
    assert settings.debounceMs is None and "at most 2000" in problems[0]
    _, problems = protocol.parse_settings({"debounceMs": "fast"})
    assert problems


def test_the_adaptive_debounce_follows_the_typists_rhythm_within_bounds():
    from diffill.server.lsp import Typing

    def rhythm(gaps: list[float]) -> float:
        t, typing = 100.0, Typing()
        typing.changed(t)
        for g in gaps:
            t += g
            typing.changed(t)
        return typing.debounce()

    assert rhythm([0.08, 0.08]) == Typing.DEFAULT  # too few keystrokes to know
    assert rhythm([0.12] * 10) == pytest.approx(0.18)  # 1.5 x the usual pause
    assert rhythm([0.04] * 10) == Typing.FLOOR  # a very fast typist: not below 100 ms
    assert rhythm([0.6] * 10) == Typing.CEILING  # a slow one: not above 400 ms
    # A pause to think (over 2 s) is not part of the rhythm.
    assert rhythm([0.12] * 5 + [30.0] + [0.12] * 5) == pytest.approx(0.18)


@pytest.mark.parametrize("key,value", [
    ("maxTokens", "32"), ("maxTokens", True), ("maxTokens", 8.0), ("threshold", "0.5"),
    ("threshold", float("nan")), ("reviewEdits", 1), ("schedule", "Fixed"), ("mode", ["line"]),
    ("enable", ["python"]), ("enable", {"python": 1}), ("model", 3), ("idleTimeout", 0),
    ("minConfidence", -0.1)])
def test_settings_of_the_wrong_json_type_are_never_coerced(key, value):
    settings, problems = protocol.parse_settings({key: value})
    assert getattr(settings, key) == getattr(protocol.Settings(), key)
    assert len(problems) == 1 and repr(key) in problems[0]


def test_settings_of_the_right_type_are_taken_as_they_are():
    settings, problems = protocol.parse_settings({"threshold": 1, "minConfidence": None, "steps": 0,
                                           "cache": "dual", "enable": {"python": False}})
    assert problems == []
    assert settings.threshold == 1.0 and isinstance(settings.threshold, float)
    assert settings.cache == "dual" and not settings.enabled_for("python")


def test_only_requests_made_while_typing_ask_for_quick_lines():
    s = protocol.Settings()
    assert s.infill_settings(automatic=True).quick_lines is True
    assert s.infill_settings().quick_lines is False  # invoked
    off, _ = protocol.parse_settings({"fastTyping": False})
    assert off.infill_settings(automatic=True).quick_lines is False


def test_ghosts_naming_the_unknown_are_hidden_unless_the_setting_says_otherwise():
    assert protocol.Settings().infill_settings().hide_unknown_names is True
    shown, problems = protocol.parse_settings({"hideUnknownNames": False})
    assert not problems and shown.infill_settings().hide_unknown_names is False
    _, problems = protocol.parse_settings({"hideUnknownNames": "no"})
    assert problems


def test_an_invoked_completion_is_an_explicit_ask_and_an_automatic_one_keeps_the_floor():
    s = protocol.Settings(minConfidence=0.7)
    typed, asked = s.infill_settings(automatic=True), s.infill_settings(automatic=False)
    assert (typed.explicit, typed.min_confidence) == (False, 0.7)
    assert (asked.explicit, asked.min_confidence) == (True, None)

"""The one wire format between diffill's processes (the LSP server, the daemon, the CLI):
engine settings, requests and results as JSON-ready dicts, through one strict cattrs
converter. Free of torch.

Settings travel flat, in the engine's own names: the sampler's fields and the context budgets
beside the others (``max_tokens``, ``schedule``, ``prefix_tokens``...; the CLI's flags are the
same names with dashes); a field left out keeps its default. A value of the wrong JSON type is
an error, never coerced (``"3"`` is not 3, ``true`` is not 1)."""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Mapping

import cattrs

from .api import InfillRequest, InfillResult, InfillSettings, SamplerSettings
from .context import ContextBudget

SAMPLER_FIELDS = frozenset(f.name for f in dataclasses.fields(SamplerSettings))
BUDGET_FIELDS = frozenset(f.name for f in dataclasses.fields(ContextBudget))
TOP_FIELDS = frozenset(f.name for f in dataclasses.fields(InfillSettings)) - {"sampler", "budget"}


class WireError(ValueError):
    """A message that does not decode: what is wrong, in one line."""


@functools.cache
def converter() -> cattrs.Converter:
    """cattrs, strict: scalars must have their JSON type (an int is a float, nothing else
    converts); Literal choices, optionals, tuples and maps are cattrs's own."""

    def exact(*kinds: type, to: type):
        def hook(value: Any, _type: Any) -> Any:
            if isinstance(value, bool) and bool not in kinds or not isinstance(value, kinds):
                raise TypeError(f"expected {to.__name__}, got {type(value).__name__}")
            return to(value)
        return hook

    conv = cattrs.Converter(forbid_extra_keys=True)
    for kind, accepted in ((bool, (bool,)), (int, (int,)), (float, (int, float)), (str, (str,))):
        conv.register_structure_hook(kind, exact(*accepted, to=kind))
    return conv


def structure(raw: Any, kind: type, what: str) -> Any:
    """``raw`` as a ``kind``, or a :class:`WireError` that names ``what`` and the problem."""
    try:
        return converter().structure(raw, kind)
    except (cattrs.BaseValidationError, cattrs.errors.CattrsError, TypeError, ValueError,
            KeyError, AttributeError) as exc:
        raise WireError(f"malformed {what}: {_reason(exc)}") from None


def _reason(exc: BaseException) -> str:
    """What is wrong and where (``expected int, got str @ $.start``)."""
    if isinstance(exc, cattrs.BaseValidationError):
        return "; ".join(cattrs.transform_error(exc, format_exception=lambda e, _: _leaf(e)))
    return _leaf(exc)


def _leaf(exc: BaseException) -> str:
    if isinstance(exc, KeyError):
        return "required field missing"
    return str(exc) or type(exc).__name__


# ---------------------------------------------------------------- settings

def settings_to_wire(settings: InfillSettings) -> dict[str, Any]:
    flat = converter().unstructure(settings)
    sampler, budget = flat.pop("sampler"), flat.pop("budget")
    return {**flat, **sampler, **budget}


def settings_from_wire(raw: Mapping[str, Any] | None) -> InfillSettings:
    """Settings from their flat form (missing fields keep their defaults)."""
    raw = dict(raw or {}) if isinstance(raw, Mapping) or raw is None else raw
    if not isinstance(raw, dict):
        raise WireError(f"malformed settings: expected an object, got {type(raw).__name__}")
    unknown = sorted(set(raw) - SAMPLER_FIELDS - BUDGET_FIELDS - TOP_FIELDS)
    if unknown:
        raise WireError(f"malformed settings: unknown {', '.join(map(repr, unknown))}")
    top = {k: v for k, v in raw.items() if k in TOP_FIELDS}
    top["sampler"] = {k: v for k, v in raw.items() if k in SAMPLER_FIELDS}
    top["budget"] = {k: v for k, v in raw.items() if k in BUDGET_FIELDS}
    if top.get("lengths") is None:
        top.pop("lengths", None)
    return structure(top, InfillSettings, "settings")


# ---------------------------------------------------------------- requests and results

def request_to_wire(req: InfillRequest) -> dict[str, Any]:
    return converter().unstructure(req)


def request_from_wire(raw: Any) -> InfillRequest:
    return structure(raw, InfillRequest, "infill request")


def result_to_wire(result: InfillResult) -> dict[str, Any]:
    return converter().unstructure(result)


def result_from_wire(raw: Any) -> InfillResult:
    return structure(raw, InfillResult, "infill result")


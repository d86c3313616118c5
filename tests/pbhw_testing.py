"""Helpers shared by the test modules (imported as ``from pbhw_testing import ...``)."""

from __future__ import annotations

from typing import Any

from pbhw.config import Config, from_dict
from pbhw.plan import Plan, derive_plan


def make_config(**sections: Any) -> Config:
    """A config from partial sections, e.g. ``make_config(optimizer={"algorithm": "sgd"})``."""
    raw: dict[str, Any] = {"network": {"layers": [6, 5, 4, 3]}}
    for key, value in sections.items():
        if isinstance(value, dict):
            raw.setdefault(key, {}).update(value)
        else:
            raw[key] = value
    return from_dict(raw)


def make_plan(**sections: Any) -> Plan:
    return derive_plan(make_config(**sections))

"""Helpers shared by the test modules (imported as ``from pbhw_testing import ...``)."""

from __future__ import annotations

import contextlib
import gc
import traceback
import warnings
from typing import Any

import pytest
from amaranth.hdl import UnusedElaboratable

from pbhw.core.config import Config, from_dict
from pbhw.core.plan import Plan, derive_plan


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


@contextlib.contextmanager
def raises_in_init(exception, match):
    """``pytest.raises`` for a constructor: the half-built component must not warn as unused.

    The traceback keeps the constructor's frame, and with it the component, alive; when it is
    collected later Amaranth warns ``UnusedElaboratable``, which the test config makes an error
    in some unrelated later test."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UnusedElaboratable)
        with pytest.raises(exception, match=match) as excinfo:
            yield
        traceback.clear_frames(excinfo.tb)
        del excinfo
        gc.collect()


def run_records(pipe, x, y):
    """Feed every sample with ``record=True``, drain, and return all step records."""
    records = []
    for i in range(len(x)):
        _, rec = pipe.step(x[i], int(y[i]), record=True)
        records.append(rec)
    while pipe.in_flight:
        _, rec = pipe.step(record=True)
        records.append(rec)
    return records

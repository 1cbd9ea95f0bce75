"""Property tests: dotted overrides (``--set train.optim.lr=3e-3``) apply exactly or fail with a named ValueError.

Over the real configs (TrainConfig with its nested OptimConfig, every named model
config): any key and any value string either give a config, or raise ValueError with
a message; never another exception. Values written from a field's own type apply
exactly.
"""

from __future__ import annotations

import dataclasses

import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from emaprobe.models import MODEL_CONFIGS  # noqa: E402
from emaprobe.train.config import TrainConfig  # noqa: E402
from emaprobe.utils import apply_overrides  # noqa: E402

SETTINGS = settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
CONFIGS = {"train": TrainConfig(), **MODEL_CONFIGS}


def _keys(cfg, prefix="") -> list[str]:
    out = []
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        out.append(prefix + f.name)
        if dataclasses.is_dataclass(value):
            out += _keys(value, f"{prefix}{f.name}.")
    return out


KEYS = st.one_of(
    st.sampled_from(sorted({k for c in CONFIGS.values() for k in _keys(c)})),
    st.text(max_size=12),
    st.sampled_from(["optim.", ".lr", "steps.x", "optim.lr.x", "", "optim..lr"]),
)
VALUES = st.one_of(
    st.text(max_size=12),
    st.sampled_from(["0", "-1", "1", "1e3", "nan", "inf", "-inf", "none", "null", "true", "off", "[1, 2]", "(0.5,)",
                     "[]", "{}", "[[1]]", "0.5,0.1", "1e999", "[\"a\"]", "ema", "bf16", "auto"]),
    st.integers(-10**6, 10**6).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
)


@SETTINGS
@given(name=st.sampled_from(sorted(CONFIGS)), overrides=st.dictionaries(KEYS, VALUES, min_size=1, max_size=3))
def test_any_override_applies_or_fails_with_a_named_valueerror(name, overrides):
    try:
        cfg = apply_overrides(CONFIGS[name], overrides)
    except ValueError as err:
        assert str(err).strip(), "an error without a message"
        return
    assert type(cfg) is type(CONFIGS[name])


def _leaf(cfg, key):
    for part in key.split("."):
        cfg = getattr(cfg, part)
    return cfg


@SETTINGS
@given(name=st.sampled_from(sorted(CONFIGS)), data=st.data())
def test_a_fields_own_value_round_trips(name, data):
    cfg = CONFIGS[name]
    key = data.draw(st.sampled_from([k for k in _keys(cfg) if not dataclasses.is_dataclass(_leaf(cfg, k))]))
    value = _leaf(cfg, key)
    if isinstance(value, tuple):
        text = ",".join(repr(v) for v in value)
    elif isinstance(value, bool):
        text = data.draw(st.sampled_from(["true", "yes", "on", "1"] if value else ["false", "no", "off", "0"]))
    else:
        text = "none" if value is None else str(value)
    assert apply_overrides(cfg, {key: text}) == cfg

"""The settings table: every setting, in the order ``refinery config`` and the README show them.

It is the single source of the settings' names, kinds, defaults and meanings: of ``refinery config``,
the README's settings table, the template's parameters (tests check both) and of every default in the
code (:func:`default_of`: a dataclass field or a constructor argument that has a default takes it
from here, never from a literal of its own).
"""

from __future__ import annotations

from typing import Any

from .parse import redact_url
from .setting import Setting
from .settings_delivery import INFLUX, PROMETHEUS, QUARANTINE
from .settings_enrichment import CLOUD_CONTROLLER, FILTERS, METADATA, ROUTING, RULES

SETTINGS: tuple[Setting, ...] = (
    *INFLUX,
    *METADATA,
    *CLOUD_CONTROLLER,
    *QUARANTINE,
    *PROMETHEUS,
    *RULES,
    *ROUTING,
    *FILTERS,
)

SETTINGS_BY_NAME = {s.name: s for s in SETTINGS}

_DEFAULTS: dict[str, Any] = {s.name: None if s.default is None else s.parse(s.default) for s in SETTINGS}


def default_of(name: str) -> Any:
    """The parsed default of setting ``name`` (``default_of("INFLUX_TIMEOUT")`` is ``10.0``); None if
    it has none. KeyError for a name that is not a setting."""
    return _DEFAULTS[name]


def display_value(name: str, value: str) -> str:
    """A setting's current value as ``refinery config`` (or any report) may print it: a secret is only
    ``(set)``, a URL is redacted (:func:`redact_url`; one without a scheme is not shown at all)."""
    setting = SETTINGS_BY_NAME.get(name)
    if setting is None:
        return value
    if setting.secret:
        return "(set)"
    if setting.kind == "url":
        return redact_url(value) if "://" in value else "(not an http(s) URL: not shown)"
    return value

"""`{param}` templates in telemetry and calibration sources, expanded over allowed values."""

from __future__ import annotations

import re
from collections.abc import Mapping

from controller.profiles.sections import Parameter

TEMPLATE = re.compile(r"\{([a-z][a-z0-9_]*)\}")


def template_names(text: str) -> list[str]:
    """The `{param}` names in `text`, in order."""
    return TEMPLATE.findall(text)


def template_values(parameters: Mapping[str, Parameter], var: str) -> list[float | str]:
    """The values a `{var}` takes: the parameter's allowed values, else its default."""
    p = parameters.get(var)
    if p is None:
        return []
    if p.allowed:
        return list(p.allowed)
    return [p.default] if p.default is not None else []


def expand_template(parameters: Mapping[str, Parameter], text: str) -> list[str]:
    """Every concrete form of `text` over the allowed values of its `{param}`s."""
    forms = [text]
    for var in template_names(text):
        values = template_values(parameters, var)
        forms = [f.replace("{" + var + "}", _fmt(v)) for f in forms for v in values]
    return forms


def _fmt(value: float | str) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)

"""Template variables given from outside: ``--var K=V`` on the command line, batch columns.

Values arrive as strings (command line, CSV) or as whatever a JSONL/Parquet cell holds. A value
is converted to the type of the variable's default, so ``{{ words * 2 }}`` still does arithmetic
when ``words`` came in as ``"200"``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from bot.prompts.template import PromptTemplate

_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}


def parse_assignments(items: Iterable[str]) -> dict[str, str]:
    """``["k=v", ...]`` -> ``{"k": "v"}``; ValueError names the item without ``=``."""
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"{item!r} is not NAME=VALUE")
        out[key.strip()] = value
    return out


def _to_bool(value: object) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text not in _TRUE | _FALSE:
        raise ValueError(text)
    return text in _TRUE


def _convert(name: str, value: object, default: object) -> object:
    kind = type(default)
    if kind is str:
        return str(value)
    try:
        if kind is bool:
            return _to_bool(value)
        if isinstance(value, bool):
            raise ValueError(value)  # True is an int to Python, not to a template author
        if kind is int:
            if isinstance(value, float) and value.is_integer():
                return int(value)
            return value if isinstance(value, int) else int(str(value).strip())
        if kind is float:
            return float(value) if isinstance(value, int | float) else float(str(value).strip())
    except ValueError:
        pass
    wanted = {bool: "true or false", int: "an integer", float: "a number"}.get(kind, "a value")
    raise ValueError(
        f"variable {name!r} takes {wanted} (its default is {default!r}), not {value!r}"
    )


def coerce_variables(
    template: PromptTemplate, values: Mapping[str, object], *, known_only: bool
) -> dict[str, object]:
    """``values`` converted to the types of the template's defaults; None means "use default".

    With ``known_only`` a name the template does not declare is a ValueError (a typo in
    ``--var``); otherwise such names pass through as they are (extra batch columns).
    """
    out: dict[str, object] = {}
    for name, value in values.items():
        if value is None:
            continue
        if name not in template.variables:
            if known_only:
                declared = ", ".join(sorted(template.variables)) or "none"
                raise ValueError(
                    f"template {template.name!r} has no variable {name!r} "
                    f"(its variables: {declared})"
                )
            out[name] = value
            continue
        out[name] = _convert(name, value, template.variables[name])
    return out

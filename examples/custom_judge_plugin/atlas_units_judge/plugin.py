"""The plugin module the ``atlas_middleware`` entry point names.

Two hooks:

- ``atlas_judges`` adds the ``units`` RIM judge: a rubric the judge model reads, asking whether
  the answer states its quantity in a sensible unit and converts units correctly. RIMReward
  prompts, samples, escalates and parses it exactly like the built-in judges.
- ``atlas_verifiers`` adds the ``units`` verifier: code, no model. When the reference is a
  quantity with a unit ("4.2 km"), it reads the answer's last quantity, converts it to the
  reference's unit and decides the ``accuracy`` judge (1.0 equal, 0.5 right number but no unit,
  0.0 otherwise). For any other task it abstains (returns None) and the next verifier or the
  judges decide.
"""

from __future__ import annotations

import re
from typing import Any

from atlas_middleware.plugins import hookimpl
from atlas_middleware.rim import Judge, Verifier

# unit → (dimension, factor to the dimension's base unit). Longest spellings are matched first so
# "km/h" is not read as "km".
_UNITS: dict[str, tuple[str, float]] = {}


def _add(dimension: str, factor: float, *names: str) -> None:
    for name in names:
        _UNITS[name] = (dimension, factor)


_add("length", 1.0, "m", "meter", "meters", "metre", "metres")
_add("length", 1000.0, "km", "kilometer", "kilometers", "kilometre", "kilometres")
_add("length", 0.01, "cm", "centimeter", "centimeters", "centimetre", "centimetres")
_add("length", 0.001, "mm", "millimeter", "millimeters", "millimetre", "millimetres")
_add("length", 1609.344, "mi", "mile", "miles")
_add("length", 0.3048, "ft", "foot", "feet")
_add("mass", 1.0, "g", "gram", "grams")
_add("mass", 1000.0, "kg", "kilogram", "kilograms")
_add("mass", 0.001, "mg", "milligram", "milligrams")
_add("mass", 453.59237, "lb", "lbs", "pound", "pounds")
_add("time", 1.0, "s", "sec", "secs", "second", "seconds")
_add("time", 60.0, "min", "mins", "minute", "minutes")
_add("time", 3600.0, "h", "hr", "hrs", "hour", "hours")
_add("volume", 1.0, "l", "liter", "liters", "litre", "litres")
_add("volume", 0.001, "ml", "milliliter", "milliliters", "millilitre", "millilitres")
_add("speed", 1.0, "m/s")
_add("speed", 1000.0 / 3600.0, "km/h", "kmh", "kph")
_add("speed", 1609.344 / 3600.0, "mph")

_UNIT_PATTERN = "|".join(re.escape(u) for u in sorted(_UNITS, key=len, reverse=True))
# A number, optionally followed by a unit that ends at a word boundary ("5 m" but not "5 apples").
_QUANTITY = re.compile(
    r"(?<![\w.])(-?\d+(?:\.\d+)?)(?:\s*(" + _UNIT_PATTERN + r")(?![\w/]))?", re.IGNORECASE
)
# Answers are usually rounded: half a percent is the same quantity.
_RELATIVE_TOLERANCE = 5e-3


def parse_quantity(text: str) -> tuple[float, str | None] | None:
    """The last quantity in ``text`` as (value, unit or None); None when there is no number."""
    matches = list(_QUANTITY.finditer(text.replace(",", "")))
    if not matches:
        return None
    value, unit = matches[-1].group(1), matches[-1].group(2)
    return float(value), unit.lower() if unit else None


def check_units(task: str, answer: str, reference: Any) -> float | None:
    """Verifier check: the answer's quantity against a reference such as ``"4.2 km"``."""
    expected = parse_quantity(str(reference)) if reference is not None else None
    if expected is None or expected[1] is None:
        return None  # not a quantity-with-unit task: abstain
    want_value, want_unit = expected
    dimension, want_factor = _UNITS[want_unit]
    got = parse_quantity(answer)
    if got is None:
        return 0.0
    value, unit = got
    if unit is None:
        # The right number without its unit is half an answer: "4200" could be metres or feet.
        return 0.5 if _close(value, want_value) else 0.0
    got_dimension, factor = _UNITS[unit]
    if got_dimension != dimension:
        return 0.0
    return 1.0 if _close(value * factor, want_value * want_factor) else 0.0


def _close(a: float, b: float) -> bool:
    return abs(a - b) <= _RELATIVE_TOLERANCE * max(abs(a), abs(b), 1e-12)


UNITS_JUDGE = Judge(
    name="units",
    rubric=(
        "Does the response state its final quantity with an explicit, appropriate unit, and are "
        "all unit conversions in it correct (e.g. 1 km = 1000 m, 1 h = 60 min)? Penalise a bare "
        "number where a unit is needed, a wrong unit, mixed units added together, and "
        "conversions done the wrong way round. When a reference answer is given, an equivalent "
        "quantity in another unit is fine."
    ),
    weight=0.2,
    uses_reference=True,
    # A wrong quantity in a nice unit is still wrong: stay close to the grounded accuracy.
    cap_above_accuracy=0.2,
)

UNITS_VERIFIER = Verifier(name="units", check=check_units)


@hookimpl
def atlas_judges() -> list[Judge]:
    return [UNITS_JUDGE]


@hookimpl
def atlas_verifiers() -> list[Verifier]:
    return [UNITS_VERIFIER]

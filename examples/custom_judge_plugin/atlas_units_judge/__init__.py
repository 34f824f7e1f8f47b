"""atlas-units-judge: a RIM judge and a verifier for answers that carry physical units."""

from atlas_units_judge.plugin import UNITS_JUDGE, UNITS_VERIFIER, parse_quantity

__all__ = ["UNITS_JUDGE", "UNITS_VERIFIER", "parse_quantity"]

"""--set values on the command line: numbers YAML 1.1 would leave as strings are numbers."""

from __future__ import annotations

import pytest
from atlas_middleware.trainer.recipes import parse_override


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("trl.learning_rate=1e-5", 1e-5),
        ("trl.learning_rate=1.5E+3", 1500.0),
        ("trl.max_steps=3", 3),
        ("trl.save_strategy=no", "no"),
        ("reward.verifier=nan", "nan"),
        ("trl.report_to=[tensorboard]", ["tensorboard"]),
    ],
)
def test_override_values(text, value):
    assert parse_override(text)[1] == value

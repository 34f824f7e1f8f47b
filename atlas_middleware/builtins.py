"""atlas's own plugin: the default RIM judges, the secret redactor and the guidance wording.

Registered through the ``atlas_middleware`` entry point exactly like a third-party plugin
(pyproject: ``builtins = "atlas_middleware.builtins"``). Every hook here is ``trylast``, so any
other plugin's answer takes precedence, and blocking the ``builtins`` name removes them all.
"""

from __future__ import annotations

from atlas_middleware.plugins import hookimpl
from atlas_middleware.redaction import Redactor, redact_secrets
from atlas_middleware.rim.judges import DEFAULT_JUDGES, Judge

GUIDANCE_HEADER = "Guidance from your teacher:"


@hookimpl(trylast=True)
def atlas_judges() -> list[Judge]:
    return list(DEFAULT_JUDGES)


@hookimpl(trylast=True)
def atlas_redactors() -> list[Redactor]:
    return [redact_secrets]


@hookimpl(trylast=True)
def atlas_render_guidance(guidance: str, task: str | None) -> str:
    # Concatenation, not str.format: guidance routinely quotes code and JSON full of braces.
    return GUIDANCE_HEADER + "\n" + guidance

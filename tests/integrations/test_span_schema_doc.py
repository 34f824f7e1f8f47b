"""docs/span-schema.md says what atlas emits: every attribute name the schema module defines is
documented, every role value too, and every attribute that a run of each integration's agents
(the contract shapes, scripted) put on its stored spans is on the page."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from atlas_middleware.storage import open_store
from atlas_middleware.telemetry import schema as s
from tests.integrations.contract_shapes import SHAPES
from tests.integrations.scripted_openai import MODEL, ScriptedOpenAI
from tests.integrations.test_contract import Endpoint, run_shape, scripted_reply

DOC = (Path(__file__).resolve().parents[2] / "docs" / "span-schema.md").read_text()
# Module constants that name attributes (the others name values, events, metrics, settings).
ATTRIBUTE_PREFIXES = ("GEN_AI_", "ATLAS_", "OI_", "OPENINFERENCE_", "HTTP_", "URL_", "SERVER_")
NOT_ATTRIBUTES = {"OI_KIND_AGENT", "OI_KIND_EVALUATOR", "OI_KIND_CHAIN", "OI_KIND_LLM"}
# Parts of flattened OpenInference keys: documented inside the full keys.
FRAGMENTS = {
    "OI_LLM_INPUT_MESSAGES",
    "OI_LLM_OUTPUT_MESSAGES",
    "OI_MESSAGE_ROLE",
    "OI_MESSAGE_CONTENT",
    "OI_MESSAGE_TOOL_CALLS",
    "OI_MESSAGE_TOOL_CALL_ID",
    "OI_TOOL_CALL_ID",
    "OI_TOOL_CALL_FUNCTION_NAME",
    "OI_TOOL_CALL_FUNCTION_ARGUMENTS",
}


def documented(name: str) -> bool:
    return f"`{name}`" in DOC


def _attribute_names() -> dict[str, str]:
    return {
        const: value
        for const, value in vars(s).items()
        if const.isupper()
        and isinstance(value, str)
        and const.startswith(ATTRIBUTE_PREFIXES)
        and const not in NOT_ATTRIBUTES
        and not const.startswith(("OI_KIND_", "MIME_"))
    } | {"ERROR_TYPE": s.ERROR_TYPE, "SERVICE_NAME": s.SERVICE_NAME}


@pytest.mark.parametrize(("const", "name"), sorted(_attribute_names().items()))
def test_every_attribute_name_of_the_schema_module_is_documented(const, name):
    if const in FRAGMENTS:
        assert name in DOC, f"{const} ({name}) is not on docs/span-schema.md"
    else:
        assert documented(name), f"{const} ({name}) is not on docs/span-schema.md"


def test_every_role_and_teacher_step_is_documented():
    for role in s.SPAN_ROLES:
        assert documented(role), role
    for step in s.TEACHER_STEPS:
        assert documented(step), step
    for value in (s.PROBE_UNPARSED, s.PROBE_FAILED, s.LABEL_UNSCORED, s.EVENT_EVALUATION_RESULT):
        assert documented(value), value


def test_every_attribute_emitted_by_the_integrations_is_documented(tmp_path):
    seen: dict[str, set[str]] = {}
    with ScriptedOpenAI(scripted_reply) as server:
        for i, shape in enumerate(SHAPES):
            url = f"sqlite:///{tmp_path / f'{i}.db'}"
            run_shape(shape, Endpoint(server.url, MODEL, True), url, "own")
            _reset_integrations()
            with open_store(url) as store:
                for row in store.iter_sessions():
                    for span in store.spans_for([row.trace_id])[row.trace_id]:
                        names = [*span.attributes]
                        names += [k for e in span.events for k in e.attributes]
                        for name in names:
                            key = re.sub(r"\.\d+(?=\.|$)", ".<i>", name)
                            seen.setdefault(key, set()).add(f"{shape}: {span.name}")
    assert len(seen) > 60  # the run really emitted the schema
    missing = {k: sorted(v)[:2] for k, v in seen.items() if not documented(k)}
    assert not missing, f"emitted but not on docs/span-schema.md: {missing}"


def _reset_integrations() -> None:
    from agents.tracing import set_trace_processors
    from atlas_middleware.integrations import langchain, litellm, llama_index, openai_agents

    for module in (langchain, litellm, llama_index, openai_agents):
        module.uninstrument()
    set_trace_processors([])

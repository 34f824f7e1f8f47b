"""Every span and attribute name atlas-middleware reads or writes. Nothing else spells them.

Three vocabularies meet here:
- OpenTelemetry GenAI semantic conventions (``gen_ai.*``, ``error.type``), used wherever they
  have a name for the thing;
- ``atlas.*`` for what the conventions lack (lanes, probe confidence, guidance, learning keys);
- OpenInference (``openinference.*``, ``input.value``, ``evaluations.<i>.evaluation.*``), mirrored
  so Phoenix-style tools read our sessions and rewards too.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Span, SpanContext, SpanKind, Status, StatusCode, Tracer

# --- GenAI semantic conventions ---------------------------------------------------------------
GEN_AI_OPERATION_NAME = "gen_ai.operation.name"
GEN_AI_AGENT_NAME = "gen_ai.agent.name"
GEN_AI_CONVERSATION_ID = "gen_ai.conversation.id"
GEN_AI_PROVIDER_NAME = "gen_ai.provider.name"
GEN_AI_REQUEST_MODEL = "gen_ai.request.model"
GEN_AI_RESPONSE_MODEL = "gen_ai.response.model"
GEN_AI_USAGE_INPUT_TOKENS = "gen_ai.usage.input_tokens"
GEN_AI_USAGE_OUTPUT_TOKENS = "gen_ai.usage.output_tokens"
GEN_AI_TOOL_NAME = "gen_ai.tool.name"
GEN_AI_TOOL_CALL_ID = "gen_ai.tool.call.id"
GEN_AI_INPUT_MESSAGES = "gen_ai.input.messages"
GEN_AI_OUTPUT_MESSAGES = "gen_ai.output.messages"
# Read only (atlas puts system prompts in gen_ai.input.messages): other producers' system prompt.
GEN_AI_SYSTEM_INSTRUCTIONS = "gen_ai.system_instructions"
ERROR_TYPE = "error.type"
GEN_AI_RESPONSE_ID = "gen_ai.response.id"
GEN_AI_TOOL_CALL_ARGUMENTS = "gen_ai.tool.call.arguments"
GEN_AI_TOOL_CALL_RESULT = "gen_ai.tool.call.result"

OP_INVOKE_AGENT = "invoke_agent"
OP_INVOKE_WORKFLOW = "invoke_workflow"
OP_CHAT = "chat"
OP_TEXT_COMPLETION = "text_completion"
OP_EXECUTE_TOOL = "execute_tool"
SESSION_OPERATIONS = frozenset({OP_INVOKE_AGENT, OP_INVOKE_WORKFLOW})

EVENT_EVALUATION_RESULT = "gen_ai.evaluation.result"
GEN_AI_EVALUATION_NAME = "gen_ai.evaluation.name"
GEN_AI_EVALUATION_SCORE_VALUE = "gen_ai.evaluation.score.value"
GEN_AI_EVALUATION_SCORE_LABEL = "gen_ai.evaluation.score.label"
GEN_AI_EVALUATION_EXPLANATION = "gen_ai.evaluation.explanation"

SERVICE_NAME = "service.name"
# HTTP client spans (OpenTelemetry HTTP conventions): remote agents called over HTTP.
HTTP_REQUEST_METHOD = "http.request.method"
HTTP_RESPONSE_STATUS_CODE = "http.response.status_code"
HTTP_REQUEST_RESEND_COUNT = "http.request.resend_count"
URL_FULL = "url.full"
SERVER_ADDRESS = "server.address"

# --- atlas.* ----------------------------------------------------------------------------------
ATLAS_SESSION_ID = "atlas.session.id"
ATLAS_LEARNING_KEY = "atlas.learning_key"
ATLAS_LANE = "atlas.lane"
# Why the lane that ran is not the one the probe or the options chose (the lane is always the one
# that ran: a paired call whose teacher could not be reached ran as auto).
ATLAS_LANE_REASON = "atlas.lane.reason"
LANE_REASON_TEACHER_UNAVAILABLE = "teacher unavailable"
ATLAS_PROBE_CONFIDENCE = "atlas.probe.confidence"
ATLAS_GUIDANCE = "atlas.guidance"
ATLAS_TASK = "atlas.task"
ATLAS_FINAL_ANSWER = "atlas.final_answer"
ATLAS_REFERENCE = "atlas.reference"
ATLAS_RETRIES = "atlas.retries"
# The validation that ran (paired and coach lanes): its verdict on the answer it checked (the first
# attempt, when a guided retry followed) and who decided it ("teacher", "teacher-compute",
# "reference", "verifier"). Absent when no validation ran or it failed open.
ATLAS_VALIDATION_VALID = "atlas.validation.valid"
ATLAS_VALIDATION_SOURCE = "atlas.validation.source"
ATLAS_FAILURES = "atlas.failures"
ATLAS_SPAN_ROLE = "atlas.span.role"
# Full structured reward (per-judge breakdown, uncertainty, audit) as JSON, beside the event.
ATLAS_EVALUATION_PAYLOAD = "atlas.evaluation.payload"
ATLAS_EVALUATION_UNCERTAINTY = "atlas.evaluation.uncertainty"
# Framework runs (LangChain / LangGraph): the node a span stands for, its superstep, the thread a
# checkpointed graph runs on, and the segments of a session that an interrupt split in parts.
ATLAS_NODE_NAME = "atlas.node.name"
ATLAS_NODE_STEP = "atlas.node.step"
ATLAS_THREAD_ID = "atlas.thread.id"
ATLAS_INTERRUPTED = "atlas.interrupted"  # this segment ended waiting for a resume
ATLAS_SEGMENT = "atlas.segment"  # 0 for the run that started the session, 1.. for resumes
ATLAS_STREAMED = "atlas.streamed"  # the answer was streamed to the caller (no retry possible)
# LlamaIndex workflows: the step a span stands for and the event type that started it.
ATLAS_STEP_NAME = "atlas.step.name"
ATLAS_STEP_INPUT_EVENT = "atlas.step.input_event"
# Steps (a node run, a workflow step, an agent turn, a tool call inside a session): set on the
# step's span when it starts, so the store needs no other span to know it is a step and where it
# hangs. ``atlas.step.kind`` is one of STEP_KINDS; ``atlas.step.parent_id`` the span id of the
# enclosing step (absent for a step directly under the session).
ATLAS_STEP_KIND = "atlas.step.kind"
ATLAS_STEP_PARENT_ID = "atlas.step.parent_id"
STEP_NODE = "node"  # a LangGraph node run
STEP_WORKFLOW = "step"  # a LlamaIndex workflow step
STEP_AGENT = "agent"  # an agent's turn inside a session (OpenAI Agents, LlamaIndex agents)
STEP_TOOL = "tool"  # a tool call
STEP_KINDS = (STEP_NODE, STEP_WORKFLOW, STEP_AGENT, STEP_TOOL)
# Rewards (evaluation spans): what they score. ``step``: the step whose span id is
# ``atlas.step.id`` (the evaluation span is that step's child); ``session``: the session.
ATLAS_REWARD_SCOPE = "atlas.reward.scope"
ATLAS_STEP_ID = "atlas.step.id"
SCOPE_STEP = "step"
SCOPE_SESSION = "session"
# atlas.reward()'s evaluation name when none is given.
DEFAULT_REWARD_NAME = "atlas.reward"

# Token usage of a session by whose calls they were (the root's gen_ai.usage.* is their sum).
ATLAS_USAGE_STUDENT_INPUT_TOKENS = "atlas.usage.student.input_tokens"
ATLAS_USAGE_STUDENT_OUTPUT_TOKENS = "atlas.usage.student.output_tokens"
ATLAS_USAGE_TEACHER_INPUT_TOKENS = "atlas.usage.teacher.input_tokens"
ATLAS_USAGE_TEACHER_OUTPUT_TOKENS = "atlas.usage.teacher.output_tokens"
# The probe's outcome when it gave no confidence: "unparsed" (the reply had no confidence
# field) or "failed" (the call failed); absent when atlas.probe.confidence is set.
ATLAS_PROBE_STATUS = "atlas.probe.status"
PROBE_UNPARSED = "unparsed"
PROBE_FAILED = "failed"
# A reward no judge could score: its evaluation carries this label and says why.
LABEL_UNSCORED = "unscored"

# atlas.span.role: whose work a span is, one vocabulary for every integration.
ROLE_SESSION = "session"  # the session's root
ROLE_STUDENT = "student"  # a model call of the supervised agent
ROLE_TEACHER = "teacher"  # a teacher model call; atlas.teacher.step says which job
ROLE_JUDGE = "judge"  # a reward judge's model call
ROLE_TOOL = "tool"  # a tool call
ROLE_AGENT = "agent"  # an agent or workflow run of the framework, inside the session
ROLE_FRAMEWORK = "framework"  # any other framework step: graph node, chain, workflow step, …
ROLE_EVALUATION = "evaluation"  # a reward (gen_ai.evaluation.result)
SPAN_ROLES = (
    ROLE_SESSION,
    ROLE_STUDENT,
    ROLE_TEACHER,
    ROLE_JUDGE,
    ROLE_TOOL,
    ROLE_AGENT,
    ROLE_FRAMEWORK,
    ROLE_EVALUATION,
)
ATLAS_TEACHER_STEP = "atlas.teacher.step"
TEACHER_STEPS = ("probe", "guidance", "validate", "lesson")
# Framework steps (role framework): what the framework called it.
FRAMEWORK_NODE = "node"  # a graph node (LangGraph)
FRAMEWORK_CHAIN = "chain"  # a chain/runnable or retriever (LangChain)
FRAMEWORK_STEP = "step"  # a workflow step (LlamaIndex)

# The evaluation whose score becomes the session's reward; other evaluations are kept beside it.
PRIMARY_EVALUATION = "atlas.rim"
# A session reward aggregated from the final judge and the step rewards (``rim.session_reward:
# mix``): when present it is the session's reward; its payload keeps the components.
AGGREGATE_EVALUATION = "atlas.aggregate"

# Metrics of the retrying exporter (otel_exporters/spool.py): spans lost and spans put on disk.
METRIC_EXPORTER_DROPPED = "atlas.exporter.spans.dropped"
METRIC_EXPORTER_SPOOLED = "atlas.exporter.spans.spooled"


def rim_judge_evaluation_name(judge: str) -> str:
    """``atlas.rim.<judge>``: one RIM judge's own evaluation, emitted beside the primary one."""
    return PRIMARY_EVALUATION + "." + judge


# Bridged framework traces (the OpenAI Agents SDK's own spans): what the framework called the span,
# its trace id (to find the run in the framework's own tools), and what the conventions lack.
ATLAS_FRAMEWORK_SPAN_TYPE = "atlas.framework.span_type"  # agent, generation, function, handoff, …
ATLAS_FRAMEWORK_TRACE_ID = "atlas.framework.trace_id"
ATLAS_FRAMEWORK_DATA = "atlas.framework.data"  # JSON of a custom span's data
ATLAS_AGENT_TOOLS = "atlas.agent.tools"
ATLAS_AGENT_HANDOFFS = "atlas.agent.handoffs"
ATLAS_HANDOFF_FROM = "atlas.handoff.from_agent"
ATLAS_HANDOFF_TO = "atlas.handoff.to_agent"
ATLAS_GUARDRAIL_NAME = "atlas.guardrail.name"
ATLAS_GUARDRAIL_TRIGGERED = "atlas.guardrail.triggered"


# --- OpenInference mirror ---------------------------------------------------------------------
OPENINFERENCE_SPAN_KIND = "openinference.span.kind"
OI_INPUT_VALUE = "input.value"
OI_INPUT_MIME_TYPE = "input.mime_type"
OI_OUTPUT_VALUE = "output.value"
OI_OUTPUT_MIME_TYPE = "output.mime_type"
OI_SESSION_ID = "session.id"
OI_LLM_MODEL_NAME = "llm.model_name"
OI_LLM_PROVIDER = "llm.provider"
OI_LLM_TOKEN_COUNT_PROMPT = "llm.token_count.prompt"
OI_LLM_TOKEN_COUNT_COMPLETION = "llm.token_count.completion"
OI_LLM_TOKEN_COUNT_TOTAL = "llm.token_count.total"
OI_LLM_INPUT_MESSAGES = "llm.input_messages"  # llm.input_messages.<i>.message.<field>
OI_LLM_OUTPUT_MESSAGES = "llm.output_messages"
OI_MESSAGE_ROLE = "message.role"
OI_MESSAGE_CONTENT = "message.content"
OI_MESSAGE_TOOL_CALLS = "message.tool_calls"  # message.tool_calls.<j>.tool_call.<field>
OI_MESSAGE_TOOL_CALL_ID = "message.tool_call_id"
OI_TOOL_CALL_ID = "tool_call.id"
OI_TOOL_CALL_FUNCTION_NAME = "tool_call.function.name"
OI_TOOL_CALL_FUNCTION_ARGUMENTS = "tool_call.function.arguments"
OI_TOOL_NAME = "tool.name"
OI_AGENT_NAME = "agent.name"
MIME_JSON = "application/json"
MIME_TEXT = "text/plain"
OI_KIND_AGENT = "AGENT"
OI_KIND_EVALUATOR = "EVALUATOR"
OI_KIND_CHAIN = "CHAIN"
OI_KIND_LLM = "LLM"
OI_KIND_TOOL = "TOOL"


def oi_evaluation_key(index: int, field: str) -> str:
    """``evaluations.<i>.evaluation.<field>`` (field: name, score, label, explanation)."""
    return f"evaluations.{index}.evaluation.{field}"


def oi_message_key(prefix: str, index: int, field: str) -> str:
    """``llm.input_messages.<i>.message.role`` and the like (``prefix``: OI_LLM_*_MESSAGES,
    ``field``: an OI_MESSAGE_* name)."""
    return f"{prefix}.{index}.{field}"


def oi_tool_call_key(prefix: str, index: int, call: int, field: str) -> str:
    """``llm.output_messages.<i>.message.tool_calls.<j>.tool_call.function.name`` and the like."""
    return f"{prefix}.{index}.{OI_MESSAGE_TOOL_CALLS}.{call}.{field}"


# --- span names -------------------------------------------------------------------------------
def session_span_name(agent: str) -> str:
    return f"{OP_INVOKE_AGENT} {agent}"


def chat_span_name(model: str) -> str:
    return f"{OP_CHAT} {model}"


def tool_span_name(tool: str) -> str:
    return f"{OP_EXECUTE_TOOL} {tool}"


def agent_span_name(agent: str) -> str:
    """One agent's turn inside a session (a bridged framework agent span), not a session root."""
    return f"{OP_INVOKE_AGENT} {agent}"


def handoff_span_name(to_agent: str) -> str:
    return f"handoff {to_agent}"


def guardrail_span_name(name: str) -> str:
    return f"guardrail {name}"


def framework_span_name(kind: str, name: str | None = None) -> str:
    """A bridged framework span with no convention of its own: ``{kind}`` or ``{kind} {name}``."""
    return f"{kind} {name}" if name else kind


def step_kind(attributes: Mapping[str, Any], *, root: bool = False) -> str | None:
    """The step kind a span stands for (one of STEP_KINDS), or None when it is no step: its own
    ``atlas.step.kind``, else what its role says (a tool call, a graph node, a workflow step, an
    agent's turn that is not the session root)."""
    kind = attributes.get(ATLAS_STEP_KIND)
    if isinstance(kind, str) and kind in STEP_KINDS:
        return kind
    if root:
        return None
    role = attributes.get(ATLAS_SPAN_ROLE)
    if role == ROLE_TOOL:
        return STEP_TOOL
    if role == ROLE_AGENT and attributes.get(GEN_AI_OPERATION_NAME) == OP_INVOKE_AGENT:
        return STEP_AGENT
    if role == ROLE_FRAMEWORK:
        span_type = attributes.get(ATLAS_FRAMEWORK_SPAN_TYPE)
        if span_type == FRAMEWORK_NODE:
            return STEP_NODE
        if span_type == FRAMEWORK_STEP:
            return STEP_WORKFLOW
    return None


def evaluation_span_name(name: str) -> str:
    return f"evaluate {name}"


def text_completion_span_name(model: str) -> str:
    return f"{OP_TEXT_COMPLETION} {model}"


def workflow_span_name(name: str) -> str:
    return f"{OP_INVOKE_WORKFLOW} {name}"


def node_span_name(node: str) -> str:
    """A graph node's span (LangGraph): ``node {name}``."""
    return f"node {node}"


def chain_span_name(name: str) -> str:
    """A framework step that is not a node, model or tool (a LangChain runnable)."""
    return f"chain {name}"


def step_span_name(step: str) -> str:
    """A workflow step's span (LlamaIndex): ``step {name}``."""
    return f"step {step}"


# --- content capture --------------------------------------------------------------------------
CAPTURE_CONTENT_ENV = "OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT"


_capture_default = True


def set_capture_content(value: bool) -> None:
    """The process-wide default for :func:`capture_content` (``telemetry.capture_content`` in
    the config); the environment variable still wins when set."""
    global _capture_default
    _capture_default = bool(value)


def _environ_reader() -> Callable[[], str | None]:
    """The variable's current value, read on every call (tests and users may set it at any
    time). ``os.environ.get`` of an unset variable raises and catches two ``KeyError``s (~0.8 µs
    on every supervised call), so this reads the mapping's own dict with the key encoded once,
    as ``os.environ`` does; anything else standing in for ``os.environ`` is read through it."""
    environ = os.environ
    data = getattr(environ, "_data", None)
    encodekey = getattr(environ, "encodekey", None)
    decodevalue = getattr(environ, "decodevalue", None)
    if not isinstance(data, dict) or encodekey is None or decodevalue is None:
        return lambda: os.environ.get(CAPTURE_CONTENT_ENV)
    key = encodekey(CAPTURE_CONTENT_ENV)

    def read() -> str | None:
        if os.environ is not environ:  # replaced wholesale (not through its methods)
            return os.environ.get(CAPTURE_CONTENT_ENV)
        raw = data.get(key)
        return None if raw is None else decodevalue(raw)

    return read


_read_capture_env = _environ_reader()


def capture_content(default: bool | None = None) -> bool:
    """Whether prompts and answers go on spans. On by default for the embedded setup;
    ``OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT=false`` (or the config's
    ``telemetry.capture_content: false``) switches it off."""
    raw = _read_capture_env()
    if raw is None:
        return _capture_default if default is None else default
    return raw.strip().lower() in {"1", "true", "yes", "on"}


# --- span helpers -----------------------------------------------------------------------------
def _clean(attributes: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in attributes.items() if v is not None}


def session_span(
    tracer: Tracer,
    *,
    agent: str,
    session_id: str,
    task: str | None = None,
    learning_key: str | None = None,
    model: str | None = None,
    provider: str | None = None,
    conversation_id: str | None = None,
    new_trace: bool = True,
    content: bool | None = None,
    parent: SpanContext | None = None,
    extra: Mapping[str, Any] | None = None,
) -> _SessionSpan:
    """The root ``invoke_agent {agent}`` span of one supervised session (a context manager
    that yields the span).

    ``new_trace`` starts a fresh trace (one trace per session) even inside a caller's span; the
    caller's span is kept as a link so both views stay connected. ``parent`` continues a session
    that an earlier root span began (a graph resumed after an interrupt): the new root is its
    child, in the same trace, so both parts make one session row. ``extra``: attributes the span
    starts with after these (as if set on it first thing).
    """
    if content is None:
        content = capture_content()
    links = []
    context = None
    if parent is not None and parent.is_valid:
        context = trace.set_span_in_context(trace.NonRecordingSpan(parent))
    elif new_trace:
        outer = trace.get_current_span().get_span_context()
        if outer.is_valid:
            links.append(trace.Link(outer))
            context = trace.set_span_in_context(trace.INVALID_SPAN)
        # else: no span is current, so the default context already starts a new trace.
    # Built key by key rather than filtered (``_clean``): on every supervised call's path.
    attributes: dict[str, Any] = {GEN_AI_OPERATION_NAME: OP_INVOKE_AGENT, GEN_AI_AGENT_NAME: agent}
    attributes[GEN_AI_CONVERSATION_ID] = conversation_id or session_id
    if model is not None:
        attributes[GEN_AI_REQUEST_MODEL] = model
    if provider is not None:
        attributes[GEN_AI_PROVIDER_NAME] = provider
    attributes[ATLAS_SESSION_ID] = session_id
    if learning_key is not None:
        attributes[ATLAS_LEARNING_KEY] = learning_key
    attributes[ATLAS_SPAN_ROLE] = ROLE_SESSION
    shown = task if content else None
    if shown is not None:
        attributes[ATLAS_TASK] = shown
    attributes[OPENINFERENCE_SPAN_KIND] = OI_KIND_AGENT
    attributes[OI_SESSION_ID] = session_id
    if shown is not None:
        attributes[OI_INPUT_VALUE] = shown
    if extra:
        attributes.update(extra)
    return _SessionSpan(tracer, session_span_name(agent), context, attributes, links)


class _SessionSpan:
    """``start_as_current_span`` (the span current while the block runs, the exception recorded
    and the status set to ERROR when it raises one, the span ended on exit), plus ``error.type``
    on the span when the block raises. A class rather than the SDK's two generator-based context
    managers: it is on every supervised call's path."""

    __slots__ = ("_span", "_start", "_token")

    def __init__(
        self,
        tracer: Tracer,
        name: str,
        context: Any,
        attributes: dict[str, Any],
        links: list[trace.Link],
    ) -> None:
        self._start = (tracer, name, context, attributes, links)

    def __enter__(self) -> Span:
        tracer, name, context, attributes, links = self._start
        span = tracer.start_span(
            name,
            context=context,
            kind=SpanKind.INTERNAL,
            attributes=attributes,
            links=links,
            record_exception=True,
            set_status_on_exception=True,
        )
        self._span = span
        self._token = otel_context.attach(trace.set_span_in_context(span))
        return span

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        span = self._span
        try:
            if exc_type is not None:
                span.set_attribute(ERROR_TYPE, exc_type.__qualname__)
            otel_context.detach(self._token)
            # Only exceptions proper: GeneratorExit (a closed flow) and the like are no errors.
            if isinstance(exc, Exception) and span.is_recording():
                span.record_exception(exc)
                span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))
        finally:
            span.end()


def set_final_answer(
    span: Span,
    answer: Any,
    *,
    content: bool | None = None,
    first: Mapping[str, Any] | None = None,
) -> None:
    """The session's final answer on ``span`` (unless content capture is off), with ``first``
    set in the same call, before it (one lock, one pass)."""
    attributes = final_answer_attributes(answer, content=content)
    if first:
        attributes = {**first, **attributes}
    if attributes:
        span.set_attributes(attributes)


def final_answer_attributes(answer: Any, *, content: bool | None = None) -> dict[str, str]:
    """The attributes :func:`set_final_answer` sets (none when content capture is off), for a
    caller that sets them along with others in one call."""
    if content is None:
        content = capture_content()
    if content and answer is not None:
        text = answer if isinstance(answer, str) else repr(answer)
        return {ATLAS_FINAL_ANSWER: text, OI_OUTPUT_VALUE: text}
    return {}


def set_usage(span: Span, input_tokens: int | None, output_tokens: int | None) -> None:
    if input_tokens is not None:
        span.set_attribute(GEN_AI_USAGE_INPUT_TOKENS, int(input_tokens))
    if output_tokens is not None:
        span.set_attribute(GEN_AI_USAGE_OUTPUT_TOKENS, int(output_tokens))


def record_evaluation(
    tracer: Tracer,
    session: SpanContext,
    *,
    name: str,
    score: float | None,
    label: str | None = None,
    explanation: str | None = None,
    uncertainty: float | None = None,
    payload: str | None = None,
    index: int = 0,
    step_id: str | None = None,
) -> None:
    """Emit one evaluation span under the session root.

    Judging may finish long after the root span ended, so this takes the root's SpanContext, not
    the span: a late reward still lands in the same trace and updates its session on ingest.
    ``score=None`` records an evaluation that could not be scored (say why in ``explanation``):
    kept with the session, never a reward. With ``step_id`` (16 hex digits) the evaluation
    scores that step, not the session: ``session`` is then the step's SpanContext and the span
    carries ``atlas.reward.scope=step`` and ``atlas.step.id``.
    """
    if score is not None and (
        isinstance(score, bool) or not isinstance(score, int | float) or not 0.0 <= score <= 1.0
    ):
        raise ValueError(f"evaluation score must be a number within [0, 1], got {score!r}")
    parent = trace.set_span_in_context(trace.NonRecordingSpan(session))
    event = _clean(
        {
            GEN_AI_EVALUATION_NAME: name,
            GEN_AI_EVALUATION_SCORE_VALUE: None if score is None else float(score),
            GEN_AI_EVALUATION_SCORE_LABEL: label,
            GEN_AI_EVALUATION_EXPLANATION: explanation,
        }
    )
    mirror = _clean(
        {
            oi_evaluation_key(index, "name"): name,
            oi_evaluation_key(index, "score"): None if score is None else float(score),
            oi_evaluation_key(index, "label"): label,
            oi_evaluation_key(index, "explanation"): explanation,
        }
    )
    with tracer.start_as_current_span(
        evaluation_span_name(name),
        context=parent,
        attributes={
            ATLAS_SPAN_ROLE: ROLE_EVALUATION,
            OPENINFERENCE_SPAN_KIND: OI_KIND_EVALUATOR,
            **mirror,
            **_clean(
                {
                    ATLAS_EVALUATION_UNCERTAINTY: uncertainty,
                    ATLAS_EVALUATION_PAYLOAD: payload,
                    ATLAS_REWARD_SCOPE: SCOPE_STEP if step_id else None,
                    ATLAS_STEP_ID: step_id,
                }
            ),
        },
    ) as span:
        span.add_event(EVENT_EVALUATION_RESULT, attributes=event)
        span.set_status(Status(StatusCode.OK))

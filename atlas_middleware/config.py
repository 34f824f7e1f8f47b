"""atlas configuration: one validated object, from YAML, ``ATLAS_*`` environment variables and
keyword arguments.

Precedence, highest first: keyword arguments > environment > YAML file > defaults. Sources are
merged per field, so ``ATLAS_TEACHER__MODEL`` changes the teacher's model while the YAML file's
``teacher.temperature`` still applies.

    AtlasConfig()                                   # defaults + environment
    AtlasConfig.from_yaml("atlas.yaml")             # + a YAML file
    AtlasConfig(teacher={"model": "openai/gpt-4o-mini"}, lanes={"max_retries": 0})

Environment variables use the prefix ``ATLAS_`` and ``__`` between levels:
``ATLAS_TEACHER__MODEL=openai/gpt-4o-mini``, ``ATLAS_LANES__AUTO_THRESHOLD=0.9``,
``ATLAS_RIM__JUDGES='["accuracy","process"]'`` (lists and mappings as JSON).

Every invalid value raises :class:`ConfigError` with one line naming the field path and the
value, e.g. ``lanes.auto_threshold: must be between 0 and 1 (got 1.7)``.
"""

from __future__ import annotations

import contextvars
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    InitSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
)

if TYPE_CHECKING:
    from atlas_middleware.review import DriftPolicy

ENV_PREFIX = "ATLAS_"
ENV_DELIMITER = "__"
# ``AtlasConfig.load()`` reads the YAML file named here when no path is given.
CONFIG_FILE_ENV = "ATLAS_CONFIG_FILE"

Lane = Literal["auto", "paired", "coach"]
LANES: tuple[Lane, ...] = ("auto", "paired", "coach")


class ConfigError(ValueError):
    """An invalid atlas setting. The message is one line: ``<field path>: <problem> (got <value>)``;
    ``field`` holds the path (``lanes.auto_threshold``) when one field is to blame."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


# --- value checks -------------------------------------------------------------------------------
# AfterValidators raising ValueError give the one-line "must be …" wording the errors promise;
# pydantic's own ge/le constraints would report two different messages for one range.
def _fraction(value: float) -> float:
    if not 0.0 <= value <= 1.0:
        raise ValueError("must be between 0 and 1")
    return value


def _temperature(value: float) -> float:
    if not 0.0 <= value <= 2.0:
        raise ValueError("must be between 0 and 2")
    return value


def _positive(value: float) -> float:
    if not value > 0:
        raise ValueError("must be greater than 0")
    return value


def _non_negative(value: int) -> int:
    if value < 0:
        raise ValueError("must be 0 or more")
    return value


def _non_negative_float(value: float) -> float:
    if not value >= 0:
        raise ValueError("must be 0 or more")
    return value


def _at_least_one(value: int) -> int:
    if value < 1:
        raise ValueError("must be 1 or more")
    return value


Fraction = Annotated[float, AfterValidator(_fraction)]
Temperature = Annotated[float, AfterValidator(_temperature)]
Seconds = Annotated[float, AfterValidator(_positive)]
Count = Annotated[int, AfterValidator(_non_negative)]
PositiveInt = Annotated[int, AfterValidator(_at_least_one)]
Weight = Annotated[float, AfterValidator(_non_negative_float)]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    def __setattr__(self, name: str, value: Any) -> None:
        # Assignments are validated too; report them like construction errors, not as pydantic's
        # multi-line ValidationError.
        try:
            super().__setattr__(name, value)
        except ValidationError as exc:
            raise _config_error(exc, type(self), prefix=type(self).__name__) from None


# --- sections -----------------------------------------------------------------------------------
class ModelSettings(_Section):
    """One model: ``embedded`` (the offline SmolLM2), a litellm spec such as
    ``openai/gpt-4o-mini`` or ``hosted_vllm/Qwen/Qwen3-8B``, or a local Hugging Face id."""

    model: str = "embedded"
    api_base: str | None = None
    # SecretStr: repr, str and JSON dumps show ``**********``; read it with .get_secret_value().
    api_key: SecretStr | None = None
    temperature: Temperature = 0.0
    max_tokens: PositiveInt = 512
    timeout_s: Seconds = 60.0
    retries: Count = 2


class TeacherSettings(ModelSettings):
    """The teacher's model, plus the prompts file it uses (see atlas_middleware/prompts.py):
    a YAML file or a directory written by ``atlas optimize --out`` (its ``active.yaml``).
    None: atlas's built-in prompts."""

    prompts: str | None = None
    # Guidance and validation replies; they sit on the agent's call path, so shorter than a
    # general model budget (the probe has its own, lanes.probe_max_tokens).
    max_tokens: PositiveInt = 160
    # Seconds of teacher work (probe, guidance, validation) one call may add; past it the
    # remaining steps are skipped (fail open). None: 8 s for a remote teacher, none for one
    # running in-process (embedded, hf:), whose per-step timeouts bound it.
    budget_s: Seconds | None = None
    # The endpoint's circuit breaker: this many failures or timeouts in a row (0: no breaker)
    # skip the teacher for breaker_cooldown_s, then one trial call decides.
    breaker_failures: Count = 3
    breaker_cooldown_s: Seconds = 30.0
    # How the teacher checks an answer: "verdict" asks it for VALID / INVALID; "compute" computes
    # the calculation its guidance names and compares the final number (for small teachers that
    # plan well but cannot do the arithmetic, e.g. one trained by `atlas learn`); "auto": compute
    # for a teacher `atlas learn` trained (the embedded default), verdict for any other.
    validation: Literal["auto", "verdict", "compute"] = "auto"


class LaneSettings(_Section):
    """How the probe's confidence picks a lane (ATLAS's thresholds by default)."""

    auto_threshold: Fraction = 0.85  # confidence ≥ this: auto (no teacher)
    paired_threshold: Fraction = 0.65  # ≥ this: paired (validate, one guided retry); else coach
    fallback_lane: Lane = "paired"  # when the probe fails or times out
    forced_lane: Lane | None = None  # skip the probe and always use this lane
    probe_max_tokens: PositiveInt = 50
    probe_timeout_s: Seconds = 10.0
    # Retries re-run the user's agent; 0 disables the paired retry (agents with side effects).
    max_retries: Count = 1

    @model_validator(mode="after")
    def _ordered(self) -> LaneSettings:
        if self.paired_threshold > self.auto_threshold:
            raise ValueError(
                f"paired_threshold ({self.paired_threshold:g}) must not exceed "
                f"auto_threshold ({self.auto_threshold:g})"
            )
        return self

    def lane_for(self, confidence: float | None) -> Lane:
        """The lane the thresholds give: the forced lane if set, the fallback lane when there is
        no confidence (probe failed), else auto / paired / coach by threshold."""
        if self.forced_lane is not None:
            return self.forced_lane
        if confidence is None or confidence != confidence:
            return self.fallback_lane
        return lane_by_threshold(confidence, self.auto_threshold, self.paired_threshold)


def lane_by_threshold(confidence: float, auto_threshold: float, paired_threshold: float) -> Lane:
    """ATLAS's rule: confidence ≥ auto_threshold → auto (no teacher), ≥ paired_threshold →
    paired (validate, one guided retry), else coach (guidance up front). The only copy."""
    if confidence >= auto_threshold:
        return "auto"
    if confidence >= paired_threshold:
        return "paired"
    return "coach"


def config_field_problem(section: str, field_name: str, value: Any) -> str | None:
    """Why ``value`` is not valid for ``<section>.<field_name>`` of the config (its type and
    range checks only), or None when it is."""
    from pydantic import TypeAdapter, ValidationError

    field = AtlasConfig.model_fields[section].annotation.model_fields[field_name]  # type: ignore[union-attr]
    parts = (field.annotation, *field.metadata)  # Annotated[parts]: Annotated[annotation, *meta]
    checked: Any = Annotated[parts] if field.metadata else field.annotation
    try:
        TypeAdapter(checked).validate_python(value)
    except ValidationError as exc:
        return "; ".join(error["msg"] for error in exc.errors())
    return None


class RimSettings(_Section):
    """RIM rewards: judges sample a small model and escalate to a large one when unsure."""

    judges: list[str] = Field(
        default_factory=lambda: ["accuracy", "process", "helpfulness", "efficiency"]
    )
    # Per-judge weights overriding each judge's own default (accuracy dominates by default).
    weights: dict[str, Weight] | None = None
    # Model specs as in ModelSettings.model. small_model None: judge with the teacher's model;
    # large_model None: no escalation (the reason is still recorded in the reward's audit).
    small_model: str | None = None
    large_model: str | None = None
    samples: PositiveInt = 3
    temperatures: tuple[Temperature, ...] = (0.2, 0.5, 0.8)
    variance_threshold: Fraction = 0.15  # escalate when the samples' std exceeds this
    uncertainty_threshold: Fraction = 0.3  # … or any sample's own uncertainty exceeds this
    # background: judged off the request path by a bounded worker; inline: before returning.
    mode: Literal["background", "inline"] = "background"
    reward_rate: Fraction = 1.0  # fraction of sessions that get a RIM reward
    # RIM on steps (opt-in): the fraction of a rewarded session's steps the judges score (each
    # step's output against the task and the steps before it); a failed step gets 0 and its
    # error whenever this is above 0. See docs/concepts.md (steps and process rewards).
    step_sample_rate: Fraction = 0.0
    # The session's reward: "final" (the final judge's, as always) or "mix":
    # (1 - step_weight) * final + step_weight * mean step reward, recorded as atlas.aggregate
    # with its components (the final judge's atlas.rim is kept beside it).
    session_reward: Literal["final", "mix"] = "final"
    step_weight: Fraction = 0.3

    @model_validator(mode="after")
    def _usable(self) -> RimSettings:
        if not self.judges:
            raise ValueError("judges must name at least one judge")
        if len(set(self.judges)) != len(self.judges):
            raise ValueError(f"judges lists a judge twice: {self.judges}")
        if not self.temperatures:
            raise ValueError("temperatures must hold at least one temperature")
        return self


class SupervisionSettings(_Section):
    rate: Fraction = 1.0  # fraction of calls that get probe + teacher; the rest run as auto


class StorageSettings(_Section):
    # None: $ATLAS_STORE_URL, else the embedded SQLite store at ./.atlas/atlas.db.
    url: str | None = None


class TelemetrySettings(_Section):
    # None: $OTEL_TRACES_EXPORTER, else "atlas" (see atlas_middleware.telemetry.configure).
    exporter: Literal["atlas", "otlp", "jsonl", "console", "none"] | None = None
    service_name: str | None = None
    capture_content: bool = True  # prompts and answers on spans (redaction still runs)
    # While the store/collector is unreachable spans wait (retried with backoff) in a queue of
    # this many spans (None: 10,000 for atlas/otlp; 0: off), plus an fsync'd on-disk spool in
    # spool_dir when set; drops are counted (atlas_middleware.telemetry.export_stats()).
    retry_queue_spans: Count | None = None
    spool_dir: str | None = None
    spool_max_mb: Seconds = 256.0
    # atlas.shutdown() and exit wait at most this long for background rewards and span delivery;
    # rewards still running are then cancelled (and counted in the log).
    drain_s: Seconds = 10.0


class ReviewSettings(_Section):
    drift_window: PositiveInt = 50
    min_baseline: PositiveInt = 5
    threshold: Seconds = 3.0  # |z| at which a drift alert fires

    def policy(self) -> DriftPolicy:
        from atlas_middleware.review import DriftPolicy

        return DriftPolicy(
            window=self.drift_window, min_baseline=self.min_baseline, threshold=self.threshold
        )


# --- root ---------------------------------------------------------------------------------------
# The YAML data of the AtlasConfig being built by from_yaml(); a context variable so concurrent
# loads in threads or tasks cannot see each other's file.
_yaml_data: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar(
    "atlas_config_yaml", default=None
)


class AtlasConfig(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter=ENV_DELIMITER,
        extra="forbid",
        validate_assignment=True,
        case_sensitive=False,
    )

    teacher: TeacherSettings = Field(default_factory=TeacherSettings)
    student: ModelSettings = Field(default_factory=ModelSettings)
    lanes: LaneSettings = Field(default_factory=LaneSettings)
    rim: RimSettings = Field(default_factory=RimSettings)
    supervision: SupervisionSettings = Field(default_factory=SupervisionSettings)
    storage: StorageSettings = Field(default_factory=StorageSettings)
    telemetry: TelemetrySettings = Field(default_factory=TelemetrySettings)
    review: ReviewSettings = Field(default_factory=ReviewSettings)

    SECTIONS: ClassVar[tuple[str, ...]] = (
        "teacher",
        "student",
        "lanes",
        "rim",
        "supervision",
        "storage",
        "telemetry",
        "review",
    )

    def __init__(self, **values: Any) -> None:
        try:
            super().__init__(**values)
        except ValidationError as exc:
            raise _config_error(exc, type(self)) from None
        except SettingsError as exc:
            raise _env_error(exc) from None

    def __setattr__(self, name: str, value: Any) -> None:
        try:
            super().__setattr__(name, value)
        except ValidationError as exc:
            raise _config_error(exc, type(self)) from None

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Earlier sources win: kwargs > environment > YAML. No .env or secrets-dir reading: a
        # stray .env in the working directory must not change supervision silently.
        data = _yaml_data.get()
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        if data:
            sources.append(InitSettingsSource(settings_cls, init_kwargs=data))
        return tuple(sources)

    @classmethod
    def from_yaml(cls, path: str | os.PathLike[str], **overrides: Any) -> AtlasConfig:
        """Load ``path`` (YAML mapping of sections); environment and ``overrides`` win over it."""
        data = _read_yaml(Path(path))
        token = _yaml_data.set(data)
        try:
            return cls(**overrides)
        except ConfigError as exc:
            if exc.field and "$" not in str(exc) and _holds(data, exc.field):
                raise ConfigError(f"{exc} (in {path})", exc.field) from None
            raise
        finally:
            _yaml_data.reset(token)

    @classmethod
    def load(cls, path: str | os.PathLike[str] | None = None, **overrides: Any) -> AtlasConfig:
        """``from_yaml(path)``; without a path, the file named by ``$ATLAS_CONFIG_FILE`` if set,
        else defaults + environment only."""
        path = path or os.environ.get(CONFIG_FILE_ENV) or None
        if path is None:
            return cls(**overrides)
        return cls.from_yaml(path, **overrides)


def _read_yaml(path: Path) -> dict[str, Any]:
    import yaml

    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(
            f"config file not found: {path} (check the path, or pass settings as keyword "
            f"arguments / {ENV_PREFIX}* environment variables instead)"
        ) from None
    except OSError as exc:
        raise ConfigError(f"config file unreadable: {path} ({exc.strerror or exc})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"config file {path}{where}: invalid YAML ({problem})") from None
    if data is None:
        return {}
    if not isinstance(data, Mapping):
        raise ConfigError(
            f"config file {path}: expected a mapping of sections "
            f"({', '.join(AtlasConfig.SECTIONS)}), got {type(data).__name__}"
        )
    return dict(data)


# --- one-line errors ----------------------------------------------------------------------------
_SECRET_PARTS = ("key", "secret", "token", "password")


def _config_error(
    exc: ValidationError, root: type[BaseModel], prefix: str | None = None
) -> ConfigError:
    errors = exc.errors(include_url=False)
    first = _describe(errors[0], root, prefix)
    message = first
    if len(errors) > 1:
        rest = "; ".join(_describe(e, root, prefix) for e in errors[1:3])
        more = f" (+{len(errors) - 3} more)" if len(errors) > 3 else ""
        message = f"{first}; also {rest}{more}"
    return ConfigError(message, _path(errors[0].get("loc", ()), prefix))


def _path(parts: tuple[Any, ...], prefix: str | None = None) -> str:
    path = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in parts).lstrip(".")
    if prefix:
        path = f"{prefix}.{path}" if path else prefix
    return path or "config"


def _holds(data: Mapping[str, Any], field: str) -> bool:
    node: Any = data
    for part in field.replace("[", ".[").split("."):
        if isinstance(node, Mapping) and part in node:
            node = node[part]
        else:
            # Inside a list the index is enough: the bad item came from this file.
            return isinstance(node, list) and part.startswith("[")
    return True


def _env_error(exc: SettingsError) -> ConfigError:
    # pydantic-settings fails before validation when a list/mapping variable is not JSON; it
    # names the section only, so list the variables that feed it.
    found = re.search(r'field "(\w+)"', str(exc))
    section = found.group(1) if found else None
    prefix = ENV_PREFIX + (section.upper() if section else "")
    names = sorted(k for k in os.environ if k.upper().startswith(prefix))
    where = f" (one of ${', $'.join(names)})" if names else ""
    return ConfigError(
        f"{section or 'config'}: an environment value could not be parsed{where}; lists and "
        f"mappings must be JSON, e.g. {ENV_PREFIX}RIM{ENV_DELIMITER}JUDGES='[\"accuracy\"]'",
        section,
    )


def _describe(error: Mapping[str, Any], root: type[BaseModel], prefix: str | None = None) -> str:
    parts = error.get("loc", ())
    loc = [str(part) for part in parts if not isinstance(part, int)]
    path = _path(parts, prefix)
    kind = error.get("type", "")
    value = error.get("input")
    if kind == "extra_forbidden":
        known = _known_fields(root, loc[:-1])
        hint = f"; known: {', '.join(known)}" if known else ""
        return f"{path}: unknown setting (got {_show(loc, value)}){hint}"
    message = str(error.get("msg", "invalid value"))
    for prefix in ("Value error, ", "Assertion failed, "):
        if message.startswith(prefix):
            message = message[len(prefix) :]
    message = message[:1].lower() + message[1:]
    env = ENV_PREFIX + ENV_DELIMITER.join(loc).upper()
    source = f" from ${env}" if loc and env in {k.upper() for k in os.environ} else ""
    if isinstance(value, Mapping):
        # A whole-section check (e.g. thresholds out of order): the message names the fields.
        return f"{path}: {message}{source}"
    return f"{path}: {message} (got {_show(loc, value)}){source}"


def _show(loc: list[str], value: Any) -> str:
    if loc and any(part in loc[-1].lower() for part in _SECRET_PARTS):
        return "[REDACTED]"
    text = repr(value) if isinstance(value, str) else str(value)
    text = " ".join(text.split())  # keep the message on one line
    return text if len(text) <= 80 else text[:77] + "..."


def _known_fields(root: type[BaseModel], loc: list[str]) -> list[str]:
    model: Any = root
    for part in loc:
        field = getattr(model, "model_fields", {}).get(part)
        if field is None:
            return []
        model = field.annotation
    fields = getattr(model, "model_fields", None)
    return sorted(fields) if fields else []

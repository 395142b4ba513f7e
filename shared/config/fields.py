"""The building blocks of every settings model: `${VAR}` expansion, secrets that may only
be `${VAR}` references, and the strict base model (unknown fields are errors)."""

from __future__ import annotations

import os
import re
import types
from collections.abc import Mapping
from typing import TYPE_CHECKING, Annotated, Any, Union, get_args, get_origin
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ModelWrapValidatorHandler,
    SecretStr,
    ValidationError,
    ValidationInfo,
    model_validator,
)
from pydantic.fields import FieldInfo
from pydantic.json_schema import GenerateJsonSchema, JsonSchemaValue
from pydantic_core import ErrorDetails, InitErrorDetails, PydanticCustomError, core_schema

from shared.logs import URL_USERINFO

_PATTERNS_IN_WORDS: dict[str, str] = {}


def pattern_in_words(pattern: str, words: str) -> str:
    """`pattern`, kept with what it allows in words: a value failing it is told those
    words, not pydantic's "String should match pattern '^...$'"."""
    _PATTERNS_IN_WORDS[pattern] = words
    return pattern


def pattern_words(pattern: str) -> str | None:
    return _PATTERNS_IN_WORDS.get(pattern)


# A source's name is a folder of every object key it writes.
SHORT_ID = pattern_in_words(r"^[a-z0-9][a-z0-9-]{0,62}$",
                            "must be 1 to 63 of a-z, 0-9 and -, starting with a letter or digit")

REFERENCE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
WHOLE_REFERENCE = re.compile(r"^\$\{([A-Za-z_][A-Za-z0-9_]*)\}$")


def environ_of(info: ValidationInfo) -> Mapping[str, str]:
    context = info.context or {}
    environ = context.get("environ")
    return environ if environ is not None else os.environ


def expand_references(value: Any, info: ValidationInfo) -> Any:
    """Replace ${NAME} inside plain strings with the variable's value."""
    if not isinstance(value, str):
        return value
    environ = environ_of(info)

    def substitute(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in environ:
            raise ValueError(f"environment variable {name} is not set; export it or edit the value")
        return environ[name]

    return REFERENCE.sub(substitute, value)


def resolve_secret(value: Any, info: ValidationInfo) -> Any:
    """Secrets must be a single ${NAME} reference, so no secret is ever committed."""
    if isinstance(value, SecretStr):
        return value
    if not isinstance(value, str):
        raise ValueError("must be a ${ENV_VAR} reference string")
    match = WHOLE_REFERENCE.match(value.strip())
    if match is None:
        raise ValueError(
            "secrets may not be written into the config; put it in an environment "
            "variable and write ${VAR_NAME} here"
        )
    name = match.group(1)
    secret = environ_of(info).get(name)
    if not secret:
        raise ValueError(f"environment variable {name} is not set or empty; export it")
    return SecretStr(secret)


EnvStr = Annotated[str, BeforeValidator(expand_references)]
Secret = Annotated[
    SecretStr,
    BeforeValidator(resolve_secret),
    Field(json_schema_extra={"writeOnly": True, "pattern": WHOLE_REFERENCE.pattern}),
]


class ConfigModel(BaseModel):
    # Schemas are built on first validation, not at import (cold start, issue 15).
    model_config = ConfigDict(extra="forbid", frozen=True, defer_build=True)

    @model_validator(mode="before")
    @classmethod
    def _empty_means_default(cls, data: Any) -> Any:
        """`timing:` with every line under it commented out is YAML null: it means what
        leaving it out means, for a field with a default that null is no value of."""
        if not isinstance(data, dict):
            return data
        return {key: value for key, value in data.items()
                if value is not None or not _null_means_default(cls.model_fields.get(key))}

    @model_validator(mode="wrap")
    @classmethod
    def _no_true_for_a_number(cls, data: Any, handler: ModelWrapValidatorHandler[Any]) -> Any:
        """pydantic's lax mode reads true as 1 and false as 0 (`max_attempts: yes` would be
        one attempt): a number field refuses them, with the section's other problems. Here,
        not in each field: a field validator for every field ("*") is refused on a source's
        `type`, the tag pydantic picks the platform by."""
        refused = _true_for_a_number(cls, data)
        if not refused:
            return handler(data)
        try:
            handler(data)
        except ValidationError as exc:
            seen = {tuple(error["loc"]) for error in refused}
            refused += [_again(error) for error in exc.errors() if tuple(error["loc"]) not in seen]
        raise ValidationError.from_exception_data(cls.__name__, refused)


def _null_means_default(field: FieldInfo | None) -> bool:
    return field is not None and not field.is_required() and not _allows_none(field.annotation)


# Keys that describe a property rather than constrain its value: they stay outside anyOf.
_ABOUT = ("title", "description", "default", "examples", "writeOnly", "deprecated")


class ConfigJsonSchema(GenerateJsonSchema):
    """The schema editors read: a field that `_empty_means_default` reads null as its
    default (`timing:` with every line under it commented out) may be null in it too."""

    def model_schema(self, schema: core_schema.ModelSchema) -> JsonSchemaValue:
        generated = super().model_schema(schema)
        model = schema["cls"]
        properties = generated.get("properties", {})
        if issubclass(model, ConfigModel):
            for name, field in model.model_fields.items():
                key = field.alias or name
                if key in properties and _null_means_default(field):
                    properties[key] = or_null(properties[key])
        return generated


def or_null(prop: JsonSchemaValue) -> JsonSchemaValue:
    """`prop` that may also be null; what describes it stays outside the anyOf."""
    about = {key: prop[key] for key in _ABOUT if key in prop}
    value = {key: v for key, v in prop.items() if key not in _ABOUT}
    choices = value["anyOf"] if list(value) == ["anyOf"] else [value]
    return {"anyOf": [*choices, {"type": "null"}], **about}


BOOL_FOR_NUMBER = "must be a number, not true or false; write the number"


def _true_for_a_number(model: type[BaseModel], data: Any) -> list[InitErrorDetails]:
    if not isinstance(data, dict):
        return []
    fields = model.model_fields
    return [InitErrorDetails(type=PydanticCustomError("bool_for_number", BOOL_FOR_NUMBER),
                             loc=(key,), input=value)
            for key, value in data.items()
            if isinstance(value, bool) and key in fields and _number_not_bool(fields[key].annotation)]


def _again(error: ErrorDetails) -> InitErrorDetails:
    """A problem pydantic found, to be raised again beside ours, worded as it was."""
    return InitErrorDetails(type=PydanticCustomError(error["type"], error["msg"], error.get("ctx")),
                            loc=error["loc"], input=error["input"])


def _number_not_bool(annotation: Any) -> bool:
    """Whether a field takes an int or a float but not a bool, looking through unions only."""
    named = _union_members(annotation)
    return bool(named & {int, float}) and bool not in named


def _union_members(annotation: Any) -> set[Any]:
    if get_origin(annotation) in (Union, types.UnionType, Annotated):
        return {member for argument in get_args(annotation) for member in _union_members(argument)}
    return {annotation}


def _allows_none(annotation: Any) -> bool:
    """Whether null is a value of its own (`X | None`), looking through unions only."""
    if annotation is type(None):
        return True
    if get_origin(annotation) in (Union, types.UnionType, Annotated):
        return any(_allows_none(argument) for argument in get_args(annotation))
    return False


class SourceSettings(ConfigModel):
    """Base of every platform's source settings (an entry of `sources`). Each platform
    declares `type: Literal["<its type>"]` and `name`; the registry maps the type to it."""

    if TYPE_CHECKING:
        type: str
        name: str

    def expand(self) -> list[SourceSettings]:
        """The sources this entry stands for: itself, or several (one per mini program
        of a third-party platform)."""
        return [self]


# Plain http only to this machine (emulators, local servers): anywhere else a token,
# secret or signature would cross the network readable by anyone on the path.
_LOCAL_HTTP = re.compile(r"^http://(127\.0\.0\.1|localhost|\[::1\])(:[0-9]+)?(/|$)", re.IGNORECASE)
HTTPS_ONLY = "must be https:// (http:// only for 127.0.0.1 or localhost): credentials travel with it"


def is_secure_url(value: str) -> bool:
    """https://, or http:// to this machine only."""
    return value[:8].lower() == "https://" or _LOCAL_HTTP.match(value) is not None


# A URL's userinfo (user:password@host) is sent as Basic auth by the HTTP client and is
# part of the URL wherever it is shown: in errors, the logs, the manifest.
USERINFO = ("must not carry a user name or password (user:password@host): they would be sent "
            "as Basic auth and show up wherever the URL is shown")


def refuse_userinfo(value: str, instead: str = "remove them") -> None:
    if "@" in urlsplit(value).netloc:
        raise ValueError(f"{USERINFO}; {instead}")


def without_userinfo(value: str) -> str:
    """`value` with the userinfo of a URL in it masked (for showing what was written)."""
    return URL_USERINFO.sub(r"\1***@", value)


def base_url(value: str) -> str:
    if not re.match(r"^https?://[^\s]+$", value, re.IGNORECASE):
        raise ValueError("must be an https:// URL")
    refuse_userinfo(value)
    if not is_secure_url(value):
        raise ValueError(HTTPS_ONLY)
    return value.rstrip("/")

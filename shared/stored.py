"""Documents kept in Redis as JSON, read back as models."""

from __future__ import annotations

from typing import TypeVar

from pydantic import BaseModel, ValidationError

ModelT = TypeVar("ModelT", bound=BaseModel)


def decode_stored(model: type[ModelT], raw: bytes | str | None) -> ModelT | None:
    """The stored document as a model; None when absent, or written by an incompatible version, so
    that a reader treats it as unknown rather than crash."""
    if raw is None:
        return None
    try:
        return model.model_validate_json(raw)
    except ValidationError:
        return None

"""The nearest configuration key to a mistyped one (``hostname`` -> ``host``)."""

from __future__ import annotations

import difflib
from typing import Any, Literal, get_args, get_origin

from pydantic import BaseModel


def _models(annotation: Any) -> list[type[BaseModel]]:
    """The pydantic models an annotation holds (through lists, unions, Annotated)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    out: list[type[BaseModel]] = []
    for arg in get_args(annotation):
        out.extend(_models(arg))
    return out


def _tagged(models: list[type[BaseModel]], tag: str) -> type[BaseModel] | None:
    """The model of a discriminated union whose tag field is ``tag``."""
    for m in models:
        for f in m.model_fields.values():
            if get_origin(f.annotation) is Literal and tag in get_args(f.annotation):
                return m
    return None


def nearest_key(model: type[BaseModel], loc: tuple[int | str, ...]) -> str | None:
    """The field name closest to the unknown key at the end of ``loc`` (a pydantic
    error location under ``model``), or None when none is close."""
    *path, key = loc
    if not isinstance(key, str):
        return None
    models = [model]
    for part in path:
        if isinstance(part, int):
            continue
        if len(models) > 1:
            tagged = _tagged(models, part)
            if tagged is not None:
                models = [tagged]
                continue
        if len(models) != 1:
            return None
        field = models[0].model_fields.get(part)
        if field is None:
            return None
        models = _models(field.annotation)
    if len(models) != 1:
        return None
    names = list(models[0].model_fields)
    found = difflib.get_close_matches(key, names, n=1, cutoff=0.6)
    return found[0] if found else None


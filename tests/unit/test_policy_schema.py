from __future__ import annotations

import inspect

from pydantic import BaseModel

from hub.policy import schema


def _models() -> list[type[BaseModel]]:
    return [obj for _, obj in inspect.getmembers(schema, inspect.isclass)
            if issubclass(obj, BaseModel) and obj.__module__ == schema.__name__]


def test_every_config_field_is_documented_with_default_or_required() -> None:
    missing = []
    for model in _models():
        for name, info in model.model_fields.items():
            text = info.description or ""
            if name not in ("kind", "api_version", "metadata", "spec") and not (
                    "Default" in text or "Required" in text or "At least" in text):
                missing.append(f"{model.__name__}.{name}: {text!r}")
    assert missing == []


def test_unknown_keys_are_forbidden_everywhere() -> None:
    assert all(m.model_config.get("extra") == "forbid" for m in _models())

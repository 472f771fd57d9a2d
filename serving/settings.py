"""Every package's settings section composed into the one object ``clickloop`` loads.

A package adds its section here (a msgspec struct it owns, with laptop defaults); the loader,
precedence and error wording are :mod:`ingest.settings`'s.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Annotated

import msgspec

from ingest.settings import Settings, load_settings


class ServingSettings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    #: Request bodies over this size are answered 413 before they are parsed
    #: (:func:`serving.app.create_app`).
    max_body_bytes: Annotated[int, msgspec.Meta(gt=0)] = 1 << 20


class ClickloopSettings(Settings, kw_only=True, forbid_unknown_fields=True):
    serving: ServingSettings = msgspec.field(default_factory=ServingSettings)


def load(path: str | os.PathLike[str] | None = None, env: Mapping[str, str] | None = None
         ) -> ClickloopSettings:
    return load_settings(path, env, ClickloopSettings)

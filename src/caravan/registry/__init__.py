"""Model pointers: which artifact is the current model, with history and rollback.

``open_pointer()`` gives the configured backend (``CARAVAN_POINTER`` or ``[caravan] pointer``):
``file`` (default, under ``[caravan] pointer_root``) or ``consul``.
"""

from __future__ import annotations

from ..config import caravan, section, setting
from ..errors import ConfigurationError
from .base import ModelPointer, PointerState

__all__ = ["ModelPointer", "PointerState", "open_pointer"]


def open_pointer(kind: str | None = None) -> ModelPointer:
    """The configured model pointer backend; its client library is imported only here."""
    kind = kind or setting("CARAVAN_POINTER", section(caravan).pointer)
    if kind == "file":
        from .file import FilePointer

        return FilePointer(setting("CARAVAN_POINTER_ROOT", section(caravan).pointer_root))
    if kind == "consul":
        from .consul import ConsulPointer

        return ConsulPointer()
    raise ConfigurationError(f"unknown model pointer backend {kind!r}; caravan knows 'file' and 'consul'")

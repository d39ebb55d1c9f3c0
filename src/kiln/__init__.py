"""Kiln: from data to a served model with PyTorch."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from kiln._version import __version__

__all__ = ["Run", "__version__", "load", "train", "trust_imports"]

if TYPE_CHECKING:
    from kiln.api import Run, load, train
    from kiln.models import trust_imports


def __getattr__(name: str) -> Any:
    # Imported on first use so that `kiln --help` does not pay for torch.
    if name in ("Run", "load", "train"):
        from kiln import api

        return getattr(api, name)
    if name == "trust_imports":  # `with kiln.trust_imports(): ...` loads runs that import code
        from kiln.models import trust_imports

        return trust_imports
    raise AttributeError(f"module 'kiln' has no attribute '{name}'")

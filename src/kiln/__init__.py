"""Kiln: from data to a served model with PyTorch.

The Python API, one function per `kiln` verb, each taking a run path (or the object a call
returned), the CLI's keyword names (`checkpoint=`, `split=`, `output=`) and dotted overrides as a
dict or as `__` keywords, and returning an object with attributes, `to_dict()` and an HTML view
in a notebook:

    import kiln

    run = kiln.train(epochs=3, model="mlp", optim__lr=3e-3)   # a Run
    kiln.evaluate(run, split="val")                            # an Evaluation
    kiln.predict(run, ["digit.png"])                           # Predictions
    kiln.compare(run, "runs/other")                            # a Comparison

The functions live in `kiln.api` and are imported on first use, so that `import kiln` and
`kiln --help` do not pay for torch.
"""

import sys as _sys
import types as _types

from kiln._version import __version__

__all__ = [
    "Run",
    "__version__",
    "compare",
    "evaluate",
    "export",
    "load",
    "lr_find",
    "predict",
    "resume",
    "serve",
    "summary",
    "train",
    "trust_imports",
    "tune",
]

_API = frozenset(__all__) - {"__version__"}
# Functions named like a subpackage (kiln/evaluate/, kiln/tune/): importing the subpackage sets
# the package's attribute to it, so the subpackage itself is made callable (it calls the function)
# and `kiln.evaluate(run)` works whether or not `kiln.evaluate.plots` was imported first.
_CALLABLE_PACKAGES = frozenset({"evaluate", "tune"})


class _CallablePackage(_types.ModuleType):
    """A subpackage that is also an API function: `kiln.tune(...)` is `kiln.api.tune(...)`."""

    def __call__(self, *args, **kwargs):
        from kiln import api

        return getattr(api, self.__name__.rsplit(".", 1)[1])(*args, **kwargs)


class _Kiln(_types.ModuleType):
    def __getattr__(self, name: str):
        if name in _CALLABLE_PACKAGES:
            import importlib

            return importlib.import_module(f"kiln.{name}")  # made callable by __setattr__
        if name in _API:
            from kiln import api

            return getattr(api, name)
        raise AttributeError(f"module 'kiln' has no attribute '{name}'")

    def __setattr__(self, name: str, value) -> None:
        if name in _CALLABLE_PACKAGES and isinstance(value, _types.ModuleType):
            value.__class__ = _CallablePackage
        super().__setattr__(name, value)

    def __dir__(self) -> list[str]:
        return sorted(__all__)


_sys.modules[__name__].__class__ = _Kiln

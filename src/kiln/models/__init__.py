"""Model zoo: `create_model(name, info, **options)` is the one door in."""

from kiln.models import cnn, lenet, mlp, resnet  # noqa: F401  (registers the built-in models)
from kiln.models.registry import MODELS, check_options, create_model, get_model, register_model

__all__ = ["MODELS", "check_options", "create_model", "get_model", "register_model"]

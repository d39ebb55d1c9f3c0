"""Model zoo: `create_model(name, info, **options)` is the one door in; `build_model(cfg, info)`
adds initialisation and starting weights. `@kiln.models.register("name")` adds your own."""

from kiln.models import (  # noqa: F401  (registers the built-in models and families)
    cnn,
    convnet,
    densegan,
    densevae,
    fastnet,
    gan,
    lenet,
    mlp,
    resnet,
    sequential,
    timm_models,
    torchvision_models,
    twolayer,
    unet,
    vae,
)
from kiln.models.build import (
    Built,
    build_model,
    import_run_modules,
    import_user_modules,
    prepare_model,
    trust_imports,
)
from kiln.models.registry import (
    FAMILIES,
    MODELS,
    check_options,
    create_model,
    get_model,
    register_model,
)

register = register_model

__all__ = [
    "FAMILIES",
    "MODELS",
    "Built",
    "build_model",
    "check_options",
    "create_model",
    "get_model",
    "import_run_modules",
    "import_user_modules",
    "prepare_model",
    "register",
    "register_model",
    "trust_imports",
]

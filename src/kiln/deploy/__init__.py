"""Deployment: export a run (ONNX, TorchScript, state_dict), and serve it over HTTP."""


def check_serve() -> None:
    """`kiln serve` needs the `serve` extra: say so in one line, not with an ImportError."""
    from kiln.errors import require

    for module in ("fastapi", "uvicorn", "python_multipart"):
        require(module, "serve", "kiln serve")

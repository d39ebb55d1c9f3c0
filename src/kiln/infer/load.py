"""Opening what a prediction comes from: a run directory (its checkpoint, run eagerly) or an export
(a model file beside its JSON sidecar, run by its own runtime)."""

from __future__ import annotations

from pathlib import Path

import torch

from kiln.data.images import RESIZE
from kiln.infer.backends import data_info, open_file
from kiln.infer.predictor import Predictor, Servable
from kiln.infer.spec import ExportSpec, InputSpec, ModelSpec, find_export
from kiln.rundir import RunDir, load_model
from kiln.tasks import get_task


def load_predictor(
    path: str | Path,
    which: str = "best",
    device: str = "cpu",
    model: torch.nn.Module | None = None,
    cls: type[Predictor] = Predictor,
) -> Predictor:
    """A run directory, an export file, its sidecar, or a folder holding one export."""
    path = Path(path)
    if path.is_dir() and (path / "config.yaml").is_file():
        return from_run(path, which, device, model, cls)
    model_file, spec = find_export(path)
    return open_export(model_file, spec, device, cls)


def load_servable(path: str | Path, device: str = "cpu", which: str = "best") -> Servable:
    """What `kiln serve` answers with: JSON-ready answers from a run's checkpoint (best or last)
    or an export."""
    return load_predictor(path, which, device, cls=Servable)


def open_export(
    model_file: Path, spec: ExportSpec, device: str = "cpu", cls: type[Predictor] = Servable
) -> Predictor:
    from kiln.infer.spec import sidecar_path
    from kiln.models import import_run_modules

    imports = spec.config.get("imports", [])
    import_run_modules(imports, sidecar_path(model_file))  # a task of your own answers too
    forward, runtime = open_file(model_file, spec, device)
    return cls(spec, forward, runtime, model_file, data_info(spec), device=device)


def from_run(path: Path, which: str, device: str, model, cls: type[Predictor]) -> Predictor:
    from kiln.models import import_run_modules

    run = RunDir.open(path)
    import_run_modules(run.load_config().imports, run.config_path)  # your own task answers too
    model, epoch = load_model(run, which, device, model)
    spec = spec_from_run(run, "run", which, epoch, file=str(run.checkpoint(which)))
    forward = get_task(spec.task).export_module(model, spec.tta)
    return cls(spec, lambda x: forward(x.to(device)), f"torch ({device})", path,
               run.data_info(), model=model, device=device)  # fmt: skip


def spec_from_run(run, fmt: str, which: str, epoch: int | None, file: str) -> ExportSpec:
    """The sidecar for a run's checkpoint `which`; parity and hash are filled in by the export."""
    from datetime import datetime, timezone

    from kiln._version import __version__
    from kiln.tasks import get_task

    cfg = run.load_config()
    info = run.data_info()
    extra = get_task(cfg.task).export_spec(cfg, info)  # what the output holds, the latent size
    return ExportSpec(
        format=fmt,
        file=file,
        tta=cfg.model.tta,
        task=cfg.task,
        classes=info.classes,
        target_mean=info.target_mean,
        target_std=info.target_std,
        latent=extra.get("latent"),
        input=InputSpec(
            channels=info.channels,
            depth=info.depth,
            layout="NCHW" if info.depth is None else "NCDHW",
            height=info.height,
            width=info.width,
            color="L" if info.channels == 1 else "RGB",
            resize=RESIZE[info.resize],
            mean=info.mean,
            std=info.std,
        ),
        output=extra["output"],
        model=ModelSpec(
            name=cfg.model.name,
            run=run.path.name,
            checkpoint=which,
            epoch=epoch,
            kiln_version=__version__,
            torch_version=torch.__version__,
            created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        ),
        config=cfg.model_dump(mode="json"),
    )


def sample_images(
    run_dir: str | Path, n: int = 64, seed: int = 0, checkpoint: str = "best", device: str = "cpu"
) -> torch.Tensor:
    """n generated images as uint8 (n, C, H, W); the same seed gives the same images."""
    from kiln.errors import ConfigError

    if n < 1:
        raise ConfigError(f"--n must be at least 1, got {n}")
    return load_predictor(run_dir, checkpoint, device).sample(n, seed)

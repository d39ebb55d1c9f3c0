"""Pretrained weights from the internet, with an offline error that says what to download."""

from __future__ import annotations

import os
from pathlib import Path
from urllib.error import URLError

import torch

from kiln.errors import ConfigError


def hub_file(url: str) -> Path:
    """Where torch.hub keeps a downloaded file ($TORCH_HOME/hub/checkpoints/<name>)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url.split("?")[0])


def fetch_state_dict(url: str, what: str) -> dict[str, torch.Tensor]:
    """The state dict at `url`, from torch.hub's cache when present, downloaded otherwise."""
    target = hub_file(url)
    try:
        return torch.hub.load_state_dict_from_url(
            url, map_location="cpu", progress=False, weights_only=True
        )
    except (URLError, OSError, RuntimeError) as exc:
        raise ConfigError(
            f"model.pretrained: could not get the weights of {what} ({exc}). Offline? Download "
            f"{url} on a machine with network, put it at {target} and run again, or set "
            "model.weights=PATH to a state dict you have"
        ) from None


def timm_pretrained_hint(arch: str) -> str:
    """What to download for a timm model: its Hugging Face repository, and the cache it goes in."""
    import timm

    repo = None
    try:
        repo = timm.models.get_pretrained_cfg(arch).hf_hub_id
    except (AttributeError, RuntimeError):
        pass
    try:
        from huggingface_hub.constants import HF_HUB_CACHE as cache
    except ImportError:  # pragma: no cover - huggingface_hub comes with timm
        cache = "~/.cache/huggingface/hub"
    where = f"the Hugging Face repository {repo}" if repo else f"timm's weights for {arch}"
    return (
        f"Offline? Download {where} on a machine with network "
        f"(huggingface-cli download {repo or arch}) "
        f"and copy it into {cache}, or set HF_HUB_OFFLINE=1 once it is there; or set "
        "model.weights=PATH to a state dict you have"
    )

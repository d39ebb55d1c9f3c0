"""task=vae and task=gan: new images from noise (what they share lives in common.py)."""

# vae registers before gan: messages list the generative tasks in this order.
# isort: off
from kiln.tasks.generate.vae import VAETask, vae_terms
from kiln.tasks.generate.gan import GANTask

# isort: on

__all__ = ["GANTask", "VAETask", "vae_terms"]

"""The compute device of a run: ``device: auto`` and explicit names, checked."""

import torch

from .errors import ConfigError


def resolve_device(name):
    """``"auto"`` -> CUDA when available, else CPU; explicit names are checked."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"Unknown device '{name}'; use auto, cpu, cuda or cuda:N.") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"Device '{name}' was requested but CUDA is not available here.")
    return device

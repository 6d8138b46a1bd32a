"""A GPU reserved for the run but unusable by torch is an error, not a silent fall back to CPU and fp32.

The usual cause in a container: the host's NVIDIA driver is older than the CUDA version torch was built
for (the cu126 wheels need driver R525+ through CUDA 12's minor-version compatibility, cu130 needs R580+).
torch then reports no device, and training would run on CPU for days.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from whisper_pipeline.errors import PipelineError

DRIVER_VERSION_FILE = Path("/proc/driver/nvidia/version")
NOT_RESERVED = {"", "void", "none"}  # NVIDIA_VISIBLE_DEVICES values that reserve no GPU


class DeviceError(PipelineError):
    """A GPU is reserved but torch cannot use it."""


@dataclass(frozen=True)
class CudaState:
    """What decides the check: the reservation, what torch sees and why, and the host driver."""

    reserved: str | None  # NVIDIA_VISIBLE_DEVICES, set by Docker's GPU reservation (compose devices)
    available: bool  # torch.cuda.is_available()
    torch_cuda: str | None  # torch.version.cuda: None for a CPU build of torch
    driver: str | None  # the host kernel module's version, from /proc/driver/nvidia/version
    reason: str | None  # torch's own warning when CUDA failed to initialise


def cuda_state(driver_file: Path = DRIVER_VERSION_FILE) -> CudaState:
    """The real state: the environment, torch.cuda (its initialisation warning captured) and /proc."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        available = torch.cuda.is_available()
    reason = next((str(w.message).strip() for w in caught if "CUDA" in str(w.message)), None)
    return CudaState(
        reserved=os.environ.get("NVIDIA_VISIBLE_DEVICES"),
        available=available,
        torch_cuda=torch.version.cuda,
        driver=_driver_version(driver_file),
        reason=reason,
    )


def _driver_version(driver_file: Path) -> str | None:
    """'NVRM version: NVIDIA UNIX x86_64 Kernel Module  550.54.15  Tue Mar ...' -> '550.54.15'."""
    try:
        words = driver_file.read_text().split()
    except OSError:
        return None
    return next((word for word in words if word[:1].isdigit() and "." in word), None)


def check_cuda(state: CudaState) -> None:
    """Raise DeviceError, naming the mismatch, when a GPU is reserved and torch cannot use it."""
    if state.reserved is None or state.reserved.strip().lower() in NOT_RESERVED or state.available:
        return
    where = f"a GPU is reserved (NVIDIA_VISIBLE_DEVICES={state.reserved}) but torch cannot use it"
    if state.torch_cuda is None:
        raise DeviceError(f"{where}: this torch is a CPU build; rebuild the image with a CUDA torch index")
    driver = f"host driver {state.driver}" if state.driver else "no NVIDIA driver visible in the container"
    detail = f" ({state.reason.splitlines()[0]})" if state.reason else ""
    raise DeviceError(
        f"{where}: torch is built for CUDA {state.torch_cuda}, {driver}{detail}; a CUDA 12 build needs "
        "driver R525 or later, CUDA 13 needs R580: update the driver or rebuild with "
        "--build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu126"
    )

"""A reserved GPU that torch cannot use is one line naming the mismatch (exit 2), never a CPU fallback."""

import pytest

from whisper_pipeline.train.device import CudaState, DeviceError, _driver_version, check_cuda, cuda_state

TOO_OLD = (
    "CUDA initialization: The NVIDIA driver on your system is too old (found version 11040). Please update "
    "your GPU driver by downloading and installing a new version from the URL: http://www.nvidia.com/...\n"
    "Alternatively, go to: https://pytorch.org to install a PyTorch version that has been compiled with "
    "your version of the CUDA driver."
)


def _state(**changes) -> CudaState:
    state = {"reserved": "MIG-4f9c2a1e", "available": False, "torch_cuda": "12.6", "driver": "470.82.01"}
    return CudaState(**{**state, "reason": TOO_OLD, **changes})


@pytest.mark.parametrize("reserved", [None, "", "void", "none"])
def test_no_reservation_means_cpu_is_intended(reserved):
    check_cuda(_state(reserved=reserved))


def test_a_usable_gpu_passes():
    check_cuda(_state(available=True, reason=None))


def test_an_old_driver_is_named_with_the_cuda_torch_needs_in_one_line():
    with pytest.raises(DeviceError) as raised:
        check_cuda(_state())
    message = str(raised.value)
    assert "\n" not in message and raised.value.exit_code == 2
    assert "NVIDIA_VISIBLE_DEVICES=MIG-4f9c2a1e" in message
    assert "CUDA 12.6" in message and "host driver 470.82.01" in message
    assert "driver on your system is too old (found version 11040)" in message
    assert "R525" in message and "cu126" in message


def test_no_driver_in_the_container_and_a_cpu_torch_are_named():
    with pytest.raises(DeviceError, match="no NVIDIA driver visible in the container"):
        check_cuda(_state(driver=None, reason=None))
    with pytest.raises(DeviceError, match="this torch is a CPU build"):
        check_cuda(_state(torch_cuda=None))


def test_driver_version_is_read_from_the_kernel_module_line(tmp_path):
    version = tmp_path / "version"
    version.write_text(
        "NVRM version: NVIDIA UNIX x86_64 Kernel Module  550.54.15  Tue Mar  5 22:23:56 UTC 2024\n"
        "GCC version:  gcc version 12.2.0 (Debian 12.2.0-14)\n"
    )
    assert _driver_version(version) == "550.54.15"
    assert _driver_version(tmp_path / "absent") is None


def test_this_machine_reserves_nothing_and_passes(monkeypatch, tmp_path):
    monkeypatch.delenv("NVIDIA_VISIBLE_DEVICES", raising=False)
    state = cuda_state(tmp_path / "absent")
    assert state.reserved is None and state.driver is None
    check_cuda(state)

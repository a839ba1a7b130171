"""Device resolution: auto picks what exists, an absent accelerator is a one-line user error."""

from __future__ import annotations

import pytest
import torch

from CervixAutoSegLib.devices import describe_device, is_out_of_memory, resolve_device
from CervixAutoSegLib.errors import InputError


def test_auto_is_cpu_without_accelerators(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")


def test_auto_prefers_cuda_then_mps(monkeypatch):
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto").type == "mps"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("AUTO").type == "cuda"


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA GPU")
def test_cuda_requested_but_absent_is_a_one_line_input_error():
    with pytest.raises(InputError) as caught:
        resolve_device("cuda")
    assert "no CUDA GPU" in str(caught.value) and "\n" not in str(caught.value)


def test_mps_requested_but_absent(monkeypatch):
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    with pytest.raises(InputError, match="MPS"):
        resolve_device("mps")


def test_unknown_device_name():
    with pytest.raises(InputError, match="unknown device 'tpu'"):
        resolve_device("tpu")


def test_cpu_description_states_threads():
    assert describe_device(resolve_device("cpu")) == f"CPU ({torch.get_num_threads()} threads)"


def test_out_of_memory_recognised_by_type_and_by_message():
    assert is_out_of_memory(torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB"))
    assert is_out_of_memory(RuntimeError("MPS backend out of memory"))
    assert not is_out_of_memory(RuntimeError("shape mismatch"))
    assert not is_out_of_memory(ValueError("out of memory"))

"""The device a run computes on, and what makes its numbers reproducible there."""

from __future__ import annotations

import os

import torch

from .errors import HeadpruneError


def resolve_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError:
        raise HeadpruneError(f"--device: unknown device '{device}' (use auto, cpu, cuda or cuda:N)") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise HeadpruneError(f"--device {device}: CUDA is not available on this machine")
    return resolved


def reproducible(device: torch.device, on: bool = True) -> None:
    """On CUDA: deterministic kernels (a fixed cuBLAS workspace, `torch.use_deterministic_algorithms`,
    warn-only where an operation has none), so that the same configuration and seeds give the same
    numbers on the same GPU; call it before the first CUDA work. On CPU a no-op (already deterministic)."""
    if device.type != "cuda":
        return


    if on:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(on, warn_only=True)
    # Deterministic mode also fills every new uninitialised tensor (NaN), an extra write of each
    # buffer: a guard for code that reads memory it never wrote, which nothing here does (every
    # batch, index and padding slot is written), so it would only cost bandwidth.
    torch.utils.deterministic.fill_uninitialized_memory = False


def cpu_has_bf16(cpuinfo: str = "/proc/cpuinfo") -> bool:
    """Whether this CPU computes bf16 natively (x86: AVX512-BF16 or AMX-BF16; Arm: the BF16
    extension), read from /proc/cpuinfo; False where that is not known (elsewhere than Linux)."""
    try:
        with open(cpuinfo, encoding="utf-8", errors="replace") as info:
            text = info.read()
    except OSError:
        return False
    flags = set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip().lower() in ("flags", "features"):
            flags.update(value.split())
    return bool(flags & {"avx512_bf16", "amx_bf16", "bf16"})


def check_precision(precision: str, device: torch.device) -> None:
    """One error line where `precision` cannot run on `device`: bf16 on a CPU without bf16 units
    (autocast would emulate it, slower than fp32 and for nothing)."""
    if precision == "bf16" and device.type == "cpu" and not cpu_has_bf16():
        raise HeadpruneError("run.precision = \"bf16\": this CPU has no bf16 support (no avx512_bf16, amx_bf16 "
                             "or bf16 flag in /proc/cpuinfo); use run.precision = \"fp32\"")


def device_description(device: torch.device) -> str:
    """The device in words, for a summary and for keying what depends on it (adjusting times)."""
    import platform

    if device.type == "cuda":
        return f"cuda: {torch.cuda.get_device_name(device)}"
    return f"cpu: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"


__all__ = ["check_precision", "cpu_has_bf16", "device_description", "reproducible", "resolve_device"]

"""What this machine computes fast. bf16 halves the bytes each convolution moves and, where the
device has bf16 arithmetic (CPUs with AVX512-BF16 or AMX, NVIDIA GPUs since Ampere, Apple GPUs),
about doubles the images/s of the frozen networks at scores that agree with fp32 (Spearman >= 0.999,
bench/RESULTS.md "throughput-default"); elsewhere bf16 is emulated, slower than fp32."""

from __future__ import annotations

import torch

CPU_BF16 = (("amx_bf16", "AMX"), ("avx512_bf16", "AVX512-BF16"))  # /proc/cpuinfo flags, best first


def cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as f:
            return {flag for line in f if line.startswith("flags") for flag in line.split(":", 1)[1].split()}
    except OSError:  # not Linux
        return set()


def native_bf16(accelerator: str = "auto") -> str | None:
    """Why the device Lightning picks for ``accelerator`` computes bf16 natively (``"AVX512-BF16"``,
    ``"CUDA sm_90"``, ``"Apple MPS"``), or None where it would be emulated."""
    if accelerator in ("gpu", "cuda", "auto") and torch.cuda.is_available():
        major, minor = torch.cuda.get_device_capability()
        return f"CUDA sm_{major}{minor}" if major >= 8 else None
    if accelerator in ("gpu", "mps", "auto") and torch.backends.mps.is_available():
        return "Apple MPS" if torch.backends.mps.is_macos_or_newer(14, 0) else None
    flags = cpu_flags()
    return next((name for flag, name in CPU_BF16 if flag in flags), None)

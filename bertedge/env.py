"""Facts about the machine and libraries, for manifests, benchmarks and `bertedge info`.

Everything here is cheap and import-light: library versions come from package metadata,
not from importing the libraries.
"""

from __future__ import annotations

import os
import platform
from functools import lru_cache
from importlib import metadata

LIBRARIES = (
    "bertedge",
    "torch",
    "transformers",
    "tokenizers",
    "huggingface_hub",
    "accelerate",
    "onnx",
    "onnxruntime",
    "onnxruntime-gpu",
    "optimum",
    "optimum-onnx",
    "neural-compressor-pt",
    "numpy",
)

# CPU features that decide which int8 kernels and fusions are fast.
INTERESTING_FLAGS = (
    "sse4_2", "avx", "avx2", "fma", "f16c",
    "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx_vnni", "avx512_bf16",
    "amx_tile", "amx_int8", "amx_bf16",
    "asimd", "asimddp", "sve", "i8mm",
)


def library_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def optimum_installed() -> bool:
    """Whether optimum and optimum-onnx are installed (the `optimum` extra), from package metadata."""
    try:
        metadata.version("optimum")
        metadata.version("optimum-onnx")
    except metadata.PackageNotFoundError:
        return False
    return True


def stack() -> dict:
    """Which library stack this is: current (transformers 5, no optimum) or legacy (optimum-onnx installed,
    which holds transformers below 4.58), and the exporters it offers. Package metadata only."""
    versions = library_versions()
    optimum = versions.get("optimum-onnx") if optimum_installed() else None
    return {"name": "legacy (optimum)" if optimum else "current", "transformers": versions.get("transformers"),
            "optimum_onnx": optimum, "exporters": ["bertedge", "optimum"] if optimum else ["bertedge"]}


def isa_class(flags) -> str:
    """The CPU's class for int8 and fp32 speed, as every figure is labelled: int8 gains differ a lot
    between AVX2 without VNNI (about 1.3x over ORT fp32) and AVX-512 with VNNI."""
    flags = set(flags)
    if {"amx_int8", "amx_tile"} <= flags:
        return "avx512-vnni-amx"
    if "avx512f" in flags:
        return "avx512-vnni" if "avx512_vnni" in flags else "avx512"
    if "avx2" in flags:
        return "avx2-vnni" if "avx_vnni" in flags else "avx2"
    if "asimd" in flags:
        return "arm64-i8mm" if "i8mm" in flags else "arm64-dotprod" if "asimddp" in flags else "arm64"
    return "other"


@lru_cache(maxsize=1)
def cpu_info() -> dict:
    """Model name, logical cores, frequency and SIMD flags of this CPU."""
    flags: set[str] = set()
    model, mhz = platform.processor() or platform.machine(), None
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "model name" and model in ("", platform.machine(), platform.processor()):
                    model = value.strip()
                elif key in ("flags", "Features") and not flags:
                    flags = set(value.split())
                elif key == "cpu MHz" and mhz is None:
                    try:
                        mhz = float(value)
                    except ValueError:
                        pass
    except OSError:
        pass
    return {
        "model": model,
        "machine": platform.machine(),
        "logical_cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "mhz": mhz,
        "flags": sorted(f for f in INTERESTING_FLAGS if f in flags),
        "isa": isa_class(flags),
    }


def ort_providers() -> list[str]:
    try:
        import onnxruntime as ort
    except ImportError:
        return []
    return list(ort.get_available_providers())


def gpu_info() -> list[dict]:
    """GPUs visible to torch (empty without torch or without a GPU)."""
    try:
        import torch
    except ImportError:
        return []
    if not torch.cuda.is_available():
        return []
    return [
        {"name": torch.cuda.get_device_name(i),
         "memory_gb": round(torch.cuda.get_device_properties(i).total_memory / 2**30, 1)}
        for i in range(torch.cuda.device_count())
    ]


def environment() -> dict:
    """What goes into every manifest: versions and CPU, no GPU probing (that imports torch)."""
    return {"versions": library_versions(), "cpu": cpu_info(), "platform": platform.platform()}

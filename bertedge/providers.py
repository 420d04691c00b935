"""ONNX Runtime execution providers: one place that maps `--provider` names to sessions.

A requested provider that is not active in the session is an error, never a silent CPU
fallback: ONNX Runtime quietly drops a provider it cannot load, so after creating the
session we compare `session.get_providers()` with what was asked for.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .errors import BenchError

PROVIDERS = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
}
# Which pip package ships each provider (onnxruntime's CPU wheel has only the CPU provider).
PROVIDER_PACKAGE = {
    "cpu": "onnxruntime",
    "cuda": "onnxruntime-gpu (with CUDA and cuDNN libraries)",
    "tensorrt": "onnxruntime-gpu (with TensorRT libraries)",
}


def provider_name(provider: str) -> str:
    """The ONNX Runtime name of a `--provider` value; unknown values are a one-line error."""
    key = provider.lower().strip()
    if key not in PROVIDERS:
        raise BenchError(f"unknown provider '{provider}'", where="--provider",
                         fix=f"Choose one of: {', '.join(PROVIDERS)}")
    return PROVIDERS[key]


def check_available(provider: str) -> str:
    """Raise unless this onnxruntime build offers the provider; returns its ORT name."""
    import onnxruntime as ort

    name = provider_name(provider)
    available = ort.get_available_providers()
    if name not in available:
        raise BenchError(
            f"provider '{provider}' ({name}) is not available in this onnxruntime build "
            f"(available: {', '.join(available)})", where="--provider",
            fix=f"Install {PROVIDER_PACKAGE[provider.lower().strip()]}, or use --provider cpu")
    return name


def provider_list(provider: str, *, trt_cache_dir: str | Path | None = None,
                  trt_options: dict | None = None) -> list:
    """The providers argument for InferenceSession: the requested one first, CPU as the last resort
    for nodes the accelerator cannot run (ORT requires it), with options for TensorRT/CUDA.
    `trt_options` adds TensorRT provider options (e.g. the trt_profile_*_shapes of a benchmark)."""
    name = check_available(provider)
    if name == "CPUExecutionProvider":
        return [name]
    providers: list = []
    if name == "TensorrtExecutionProvider":
        options: dict[str, Any] = {"trt_fp16_enable": False}
        if trt_cache_dir is not None:
            Path(trt_cache_dir).mkdir(parents=True, exist_ok=True)
            options.update({"trt_engine_cache_enable": True, "trt_engine_cache_path": str(trt_cache_dir)})
        options.update(trt_options or {})
        providers.append((name, options))
        providers.append("CUDAExecutionProvider")
    else:
        providers.append(name)
    providers.append("CPUExecutionProvider")
    return providers


def make_session(model_path: str | Path, provider: str = "cpu", *, threads: int | None = None,
                 optimization: str = "all", trt_cache_dir: str | Path | None = None,
                 trt_options: dict | None = None, spinning: bool | None = None,
                 cpu_mem_arena: bool | None = None, mem_pattern: bool | None = None):
    """An InferenceSession on `provider`, verified to be active; `threads` sets intra-op threads.

    `optimization` is the graph optimisation level ONNX Runtime applies when loading:
    "all" (default), "extended", "basic" or "disabled". `spinning=False` stops idle intra-op threads
    from busy-waiting (ORT's default spins), which matters when several sessions share the cores.

    Memory under inputs of many shapes (a server seeing every batch x length): `cpu_mem_arena=False`
    allocates each call's tensors from the system allocator instead of ORT's CPU arena, which grows to
    the largest shape seen and keeps that memory (onnxruntime#11627); `mem_pattern=False` stops ORT
    planning (and caching) one memory layout per input shape. None leaves ORT's default (both on).
    benchmarks/results/soak-rss.md measures them on 10,000 calls of random lengths.
    """
    import onnxruntime as ort

    from .errors import ArtifactError

    levels = {"all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
              "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
              "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
              "disabled": ort.GraphOptimizationLevel.ORT_DISABLE_ALL}
    options = ort.SessionOptions()
    options.graph_optimization_level = levels[optimization]
    options.log_severity_level = 3
    if threads:
        options.intra_op_num_threads = int(threads)
        options.inter_op_num_threads = 1
    if spinning is not None:
        options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    if cpu_mem_arena is not None:
        options.enable_cpu_mem_arena = bool(cpu_mem_arena)
    if mem_pattern is not None:
        options.enable_mem_pattern = bool(mem_pattern)
    providers = provider_list(provider, trt_cache_dir=trt_cache_dir, trt_options=trt_options)
    try:
        session = ort.InferenceSession(str(model_path), sess_options=options, providers=providers)
    except Exception as exc:  # noqa: BLE001 - ORT raises its own exception types for bad files
        detail = " ".join(str(exc).split())[:240]
        raise ArtifactError(f"ONNX Runtime cannot load the model ({detail})", where=str(model_path),
                            fix="The file is corrupt or truncated; re-export the bundle") from None
    wanted = provider_name(provider)
    active = session.get_providers()
    if wanted not in active:
        raise BenchError(f"provider '{provider}' was requested but the session runs on {', '.join(active)}",
                         where="--provider",
                         fix=f"Check the {PROVIDER_PACKAGE[provider.lower().strip()]} install and its GPU "
                             "libraries, or use --provider cpu")
    return session

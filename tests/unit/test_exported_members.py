"""The curated public API: what `edgecloud` exports, and that every public module declares __all__."""

import importlib
import pkgutil

import edgecloud

EXPECTED = {
    "AsyncClient", "AsyncStream", "ChatMessage", "Chunk", "Client", "Confidence", "ConfigError",
    "ContextOverflowError", "DeviceError", "EdgeCloudError", "GenerateOptions", "GenerationResult",
    "InvalidRequestError", "ModelIntegrityError", "ModelLoadError", "ModelNotFoundError",
    "SamplingParams", "Settings", "Stream", "StructuredOutputError", "Timings", "ToolCall", "Usage",
    "__version__",
}  # fmt: skip


def test_top_level_exports_are_curated() -> None:
    assert set(edgecloud.__all__) == EXPECTED
    for name in edgecloud.__all__:
        assert hasattr(edgecloud, name), name


def _public_modules() -> list[str]:
    names = []
    for info in pkgutil.walk_packages(edgecloud.__path__, "edgecloud."):
        parts = info.name.split(".")
        if any(p.startswith("_") for p in parts[1:]):
            continue
        names.append(info.name)
    return names


def test_every_public_module_has_all() -> None:
    modules = _public_modules()
    assert "edgecloud.errors" in modules
    assert "edgecloud.backends.llama_cpp" in modules
    for name in modules:
        module = importlib.import_module(name)
        exported = getattr(module, "__all__", None)
        assert exported is not None, f"{name} has no __all__"
        for attr in exported:
            assert hasattr(module, attr), f"{name}.__all__ names missing {attr}"

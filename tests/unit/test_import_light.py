import subprocess
import sys

HEAVY = ("llama_cpp", "onnxruntime", "torch", "zeroconf", "numpy", "grpc", "transformers",
         "prometheus_client")  # fmt: skip


def test_import_edgecloud_loads_no_native_library() -> None:
    code = (
        "import sys, edgecloud, edgecloud.device, edgecloud.config, edgecloud.types;"
        f"print(','.join(m for m in {HEAVY!r} if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def _first_use(package: str, libs: tuple[str, ...], attr: str, witness: str) -> list[str]:
    """What importing ``package`` loads of ``libs``, then whether reading ``attr``
    loads ``witness`` (each in a fresh interpreter)."""
    code = (
        f"import sys, {package} as a;"
        f"print(','.join(m for m in {libs!r} if m in sys.modules));"
        f"a.{attr}; print({witness!r} in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return out.stdout.splitlines()


def test_the_adapters_package_loads_its_libraries_on_first_use() -> None:
    libs = ("cryptography", "fsspec", "gguf", "numpy")
    assert _first_use("edgecloud.adapters", libs, "Manifest", "pydantic") == ["", "True"]


def test_the_http_package_loads_fastapi_and_uvicorn_only_when_an_app_is_built() -> None:
    libs = ("fastapi", "uvicorn", "starlette")
    assert _first_use("edgecloud.http", libs, "create_app", "fastapi") == ["", "True"]

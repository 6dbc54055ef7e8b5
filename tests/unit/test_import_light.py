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


def test_the_adapters_package_loads_its_libraries_on_first_use() -> None:
    code = (
        "import sys, edgecloud.adapters as a;"
        "print(','.join(m for m in ('cryptography', 'fsspec', 'gguf', 'numpy') if m in sys.modules));"
        "a.Manifest; print('cryptography' in sys.modules or 'pydantic' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.splitlines() == ["", "True"]

import subprocess
import sys

HEAVY = ("llama_cpp", "onnxruntime", "torch", "zeroconf", "numpy", "grpc", "transformers")


def test_import_edgecloud_loads_no_native_library() -> None:
    code = (
        "import sys, edgecloud, edgecloud.device, edgecloud.config, edgecloud.types;"
        f"print(','.join(m for m in {HEAVY!r} if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""

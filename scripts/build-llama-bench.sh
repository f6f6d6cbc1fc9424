#!/usr/bin/env bash
# Builds llama.cpp's llama-bench from the llama-cpp-python sdist on PyPI (sha256-checked), for
# the comparison in `cargo bench --bench enforce` (which runs it when LLAMA_BENCH points at it).
# Prints the binary's path. Needs a C++ compiler; cmake comes from PyPI into .venv.
set -euo pipefail
cd "$(dirname "$0")/.."
version=0.3.36
sha=832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e
url=https://files.pythonhosted.org/packages/ec/e9/e7de2b0463ea3ffbf0ede6cb21b58c1258a8f6521aae45ca773a59fe7cf3/llama_cpp_python-$version.tar.gz
work="${LLAMA_WORK:-/var/tmp/visa-llama-cpp}"
bin="$work/build/bin/llama-bench"
if [ -x "$bin" ]; then echo "$bin"; exit 0; fi
mkdir -p "$work"
if ! echo "$sha  $work/sdist.tar.gz" | sha256sum -c --status 2>/dev/null; then
  curl -fsSL --retry 3 -o "$work/sdist.tar.gz" "$url"
  echo "$sha  $work/sdist.tar.gz" | sha256sum -c --status || { echo "sha256 mismatch" >&2; exit 1; }
fi
tar -xzf "$work/sdist.tar.gz" -C "$work"
src="$work/llama_cpp_python-$version/vendor/llama.cpp"
[ -x .venv/bin/cmake ] || .venv/bin/pip install --quiet cmake==3.31.6 >&2
.venv/bin/cmake -S "$src" -B "$work/build" -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON \
  -DLLAMA_CURL=OFF -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF >&2
.venv/bin/cmake --build "$work/build" --target llama-bench -j "$(nproc)" >&2
echo "$bin"

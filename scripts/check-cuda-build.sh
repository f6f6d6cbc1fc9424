#!/usr/bin/env bash
# Checks that visa-proxy compiles with the `cuda` feature (candle's CUDA backend for
# `train-rewriter --device cuda`) on a machine without a GPU or a CUDA install: fetches the
# CUDA 13.4 compiler (nvcc, cicc, ptxas), its headers and the runtime headers from the PyPI
# wheels NVIDIA publishes, checks their SHA-256, and runs `cargo clippy --features cuda` (a
# type check with the lints, -D warnings), whose build scripts compile candle's kernels with
# that nvcc (to PTX for sm_$CUDA_COMPUTE_CAP, 90 = H100/H200 by default). .ci/run calls it
# with its own target directory (/var/tmp/visa-proxy-target-cuda). It does not link: a binary also needs the CUDA driver, cuBLAS,
# cuRAND and NVRTC libraries at link time (candle links cudarc dynamically), which a machine
# with the CUDA toolkit has.
#
#   bash scripts/check-cuda-build.sh              # cargo clippy --release --features cuda
#   CUDA_COMPUTE_CAP=80 bash scripts/check-cuda-build.sh
#   bash scripts/check-cuda-build.sh --env        # only print the environment to build with
set -euo pipefail
cd "$(dirname "$0")/.."
dir="${VISA_CUDA_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/visa-proxy/cuda-13.4}"
python="${PYTHON:-python3}"

# package==version sha256 (cudarc 0.19 knows CUDA up to 13.4; CCCL is versioned on its own)
wheels=(
  "nvidia-cuda-nvcc==13.4.92 a1f3bfb27299e060b444d5df1f4bcd762501326cf0fd3141ed61756816ab9a0e"
  "nvidia-cuda-crt==13.4.92 731ce3de11df8add8306404417a1edaede225dbe27eb233aed37c8de9d4fe720"
  "nvidia-nvvm==13.4.92 e4c81cb321dd9743bcf871c5e7e8fecd7f05dea607944426e102bdda8d49e137"
  "nvidia-cuda-runtime==13.4.92 9641f797da20ce1dd8e779b6e96d08cf9ba564cec8e8225458811ee26423f3a5"
  "nvidia-cuda-cccl==13.3.5.0.6 d5230098fa2df5021e1a00c0c4eee41797671a91119d31e892463e5ccf3ee326"
)

root="$dir/nvidia/cu13"
if [ ! -x "$root/bin/nvcc" ] || [ ! -f "$dir/.complete" ]; then
  rm -rf "$dir"
  mkdir -p "$dir/wheels"
  req="$dir/requirements.txt"
  for w in "${wheels[@]}"; do
    read -r spec digest <<<"$w"
    echo "$spec --hash=sha256:$digest" >>"$req"
  done
  # --require-hashes: pip refuses any wheel whose digest differs.
  "$python" -m pip download --quiet --no-deps --require-hashes --only-binary=:all: \
    --platform manylinux2014_x86_64 --python-version 3 -r "$req" -d "$dir/wheels"
  for whl in "$dir"/wheels/*.whl; do
    "$python" -m zipfile -e "$whl" "$dir"
  done
  chmod +x "$root"/bin/* "$root"/nvvm/bin/*
  rm -rf "$dir/wheels"
  touch "$dir/.complete"
fi

export PATH="$root/bin:$PATH"
export CUDA_HOME="$root" CUDA_PATH="$root"
export CUDA_COMPUTE_CAP="${CUDA_COMPUTE_CAP:-90}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/visa-proxy-target-cuda}"
nvcc --version | tail -1
if [ "${1:-}" = "--env" ]; then
  echo "export PATH=\"$root/bin:\$PATH\" CUDA_HOME=\"$root\" CUDA_PATH=\"$root\" CUDA_COMPUTE_CAP=$CUDA_COMPUTE_CAP"
  exit 0
fi
cargo clippy --release --locked --features cuda --all-targets -- -D warnings
echo "the cuda feature compiles (kernels for sm_$CUDA_COMPUTE_CAP)"

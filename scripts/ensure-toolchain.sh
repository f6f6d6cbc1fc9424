#!/usr/bin/env bash
# Makes the toolchain that rust-toolchain.toml pins available to rustup. On a machine whose
# installed `stable` is that very version (these machines cannot download toolchains), it
# registers `stable` under the pinned name, as rustup's own toolchain directory (rustup refuses
# `toolchain link` for a release name), so cargo neither tries a download nor builds with
# another version; elsewhere rustup installs it. Anything else fails here, naming both versions.
set -euo pipefail
cd "$(dirname "$0")/.."
want=$(sed -n 's/^channel *= *"\(.*\)"/\1/p' rust-toolchain.toml)
command -v rustup >/dev/null || { echo "ensure-toolchain: rustup not found; install Rust $want" >&2; exit 1; }
if rustup run "$want" rustc --version >/dev/null 2>&1; then
    exit 0
fi
have=$(rustup run stable rustc --version 2>/dev/null | awk '{print $2}' || true)
if [ "$have" = "$want" ]; then
    host=$(rustup run stable rustc -vV | sed -n 's/^host: //p')
    ln -sfn "$(rustup run stable rustc --print sysroot)" "${RUSTUP_HOME:-$HOME/.rustup}/toolchains/$want-$host"
    rustup run "$want" rustc --version >/dev/null
    echo "ensure-toolchain: linked the installed stable ($have) as $want"
    exit 0
fi
if rustup toolchain install "$want" --profile minimal --component clippy,rustfmt; then
    exit 0
fi
echo "ensure-toolchain: rust-toolchain.toml pins $want; the installed stable is ${have:-none}, and $want could not be installed" >&2
exit 1

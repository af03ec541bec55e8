#!/usr/bin/env bash
# `make build`: the four functions' release zips, `target/lambda/<function>/bootstrap.zip`,
# built by cargo-lambda with zig as the cross-linker (both pinned in infra/build-requirements.txt,
# installed into .venv-build). The zips are what SAM and CDK upload (`sam deploy` builds its
# own with the same cargo-lambda; the CDK app takes the `bootstrap` beside each zip).
#
# ARCH=arm64 or ARCH=x86_64 chooses; by default arm64 (Graviton: cheaper per GB-second) when
# the Rust toolchain has the aarch64 standard library, else x86_64. Deploy with the same
# Architecture parameter.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
functions=(tether-interruption tether-state-change tether-reconciler tether-api)

arch="${ARCH:-}"
if [[ -z "$arch" ]]; then
    if rustup target list --installed 2>/dev/null | grep -qx aarch64-unknown-linux-gnu; then
        arch=arm64
    else
        arch=x86_64
        echo "build: this Rust toolchain has no aarch64 standard library, so x86_64;"
        echo "       for arm64: rustup target add aarch64-unknown-linux-gnu, then make build again"
    fi
fi
case "$arch" in
    arm64) target=(--arm64) ;;
    x86_64) target=(--x86-64) ;;
    *) echo "build: ARCH must be arm64 or x86_64, not '$arch'" >&2; exit 2 ;;
esac

# cargo-lambda finds zig through the venv's `python3 -m ziglang`.
export PATH="$root/.venv-build/bin:$PATH"
cd "$root"
bins=()
for f in "${functions[@]}"; do bins+=(--bin "$f"); done
echo "build: cargo lambda build --release ${target[*]} (a cold release build takes about 9 minutes)"
# The binary for the CDK app first, then the same binary zipped (packaging only, no rebuild).
cargo lambda build --release "${target[@]}" "${bins[@]}"
cargo lambda build --release "${target[@]}" --output-format zip "${bins[@]}"

echo "build: $arch release zips (deploy with Architecture=$arch):"
for f in "${functions[@]}"; do
    zip="target/lambda/$f/bootstrap.zip"
    printf '  %-60s %6d KiB zipped, %6d KiB unzipped\n' "$zip" $(( $(stat -c %s "$zip") / 1024 )) $(( $(stat -c %s "target/lambda/$f/bootstrap") / 1024 ))
done

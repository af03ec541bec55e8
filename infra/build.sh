#!/usr/bin/env bash
# `make build`: the four functions' release builds for Lambda's provided.al2023, by
# cargo-lambda with zig as the cross-linker (both pinned in infra/build-requirements.txt,
# installed into .venv-build):
#   target/lambda-zip/<function>/bootstrap.zip   the deployment packages
#   target/lambda/<function>/bootstrap           the same binaries, which the CDK app packages
# Kept apart so that the CDK app's asset folders hold the binary alone.
#
# ARCH=arm64 (or aarch64) / ARCH=x86_64 (or amd64) chooses; by default arm64 (Graviton:
# cheaper per GB-second) when the Rust toolchain has the aarch64 standard library, else
# x86_64. Deploy with the same Architecture parameter.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
functions=(tether-interruption tether-state-change tether-reconciler tether-api)

arch="${ARCH:-}"
if [[ -z "$arch" ]]; then
    if [[ -d "$(rustc --print sysroot)/lib/rustlib/aarch64-unknown-linux-gnu" ]]; then
        arch=arm64
    else
        arch=x86_64
        echo "build: this Rust toolchain has no aarch64 standard library, so x86_64;"
        echo "       for arm64: rustup target add aarch64-unknown-linux-gnu, then make build again"
    fi
fi
case "$arch" in
    arm64 | aarch64) arch=arm64 target=(--arm64) ;;
    x86_64 | amd64) arch=x86_64 target=(--x86-64) ;;
    *) echo "build: ARCH must be arm64 or x86_64, not '$arch'" >&2; exit 2 ;;
esac

# cargo-lambda finds zig through the venv's `python3 -m ziglang`.
export PATH="$root/.venv-build/bin:$PATH"
cd "$root"
bins=()
for f in "${functions[@]}"; do bins+=(--bin "$f"); done
echo "build: cargo lambda build --release ${target[*]} (a cold release build takes about 9 minutes)"
cargo lambda build --release "${target[@]}" "${bins[@]}"
# The same binaries zipped: packaging only, nothing is compiled again.
cargo lambda build --release "${target[@]}" --output-format zip --lambda-dir target/lambda-zip "${bins[@]}"

echo "build: $arch release zips (deploy with Architecture=$arch):"
for f in "${functions[@]}"; do
    zip="target/lambda-zip/$f/bootstrap.zip"
    printf '  %-52s %6d KiB zipped, %6d KiB unzipped\n' "$zip" $(( $(wc -c < "$zip") / 1024 )) $(( $(wc -c < "target/lambda/$f/bootstrap") / 1024 ))
done

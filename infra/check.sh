#!/usr/bin/env bash
# Checks both deploy stacks offline (run by `make infra-check`, part of `make test`):
# the SAM template lints clean; the CDK app compiles, its assertion and parity tests pass,
# it synthesizes (on stub code assets: no release build needed) and its template lints clean.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
venv="$root/.venv-infra"
export CDK_DISABLE_CLI_TELEMETRY=true SAM_CLI_TELEMETRY=0

"$venv/bin/cfn-lint" "$root/infra/template.yaml"
echo "infra: SAM template lints clean (cfn-lint $("$venv/bin/cfn-lint" --version | cut -d' ' -f2))"
"$venv/bin/python" "$root/infra/sam-to-json.py"

cd "$root/infra/cdk"
npm test --silent

stubs="$(mktemp -d)"
trap 'rm -rf "$stubs"' EXIT
for binary in tether-interruption tether-state-change tether-reconciler tether-api; do
    mkdir -p "$stubs/$binary" && printf '#!/bin/sh\n' > "$stubs/$binary/bootstrap"
done
rm -rf cdk.out
TETHER_LAMBDA_ASSETS="$stubs" CDK_OUTDIR=cdk.out node dist/bin/tether.js
# W3005: CDK adds a DependsOn on the role its functions already reference by GetAtt.
"$venv/bin/cfn-lint" --ignore-checks W3005 -- cdk.out/Tether.template.json
echo "infra: CDK app synthesizes; its template lints clean"

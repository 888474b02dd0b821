#!/usr/bin/env bash
# The test suite, as CI runs it: fetch the real default assets (cached in ~/.cache/tttnn),
# then every test of the workspace.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/fetch_assets.sh
cargo test --workspace --locked "$@"

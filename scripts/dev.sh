#!/usr/bin/env bash
# The main job: set up, build, and run a local three-node authsec cluster until Ctrl-C.
# Extra arguments go to `authsec dev` (e.g. --fresh, --base-port 7300).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/env.sh
scripts/setup.sh
cargo build --locked -p authsec-node
exec "$CARGO_TARGET_DIR/debug/authsec" dev "$@"

# Sourced by the other scripts: one shared Cargo target directory outside the clone, so a
# fresh clone (and CI) reuses an earlier RocksDB build instead of paying eight minutes again.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/authsec-target}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
# CI builds each fresh clone once: incremental caches would only pile up per clone path in the
# shared target directory (gigabytes per run) without ever being reused.
if [ -n "${CI:-}" ]; then
  export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"
fi

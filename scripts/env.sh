# Sourced by the other scripts: one shared Cargo target directory outside the clone, so a
# fresh clone (and CI) reuses an earlier RocksDB build instead of paying eight minutes again.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/authsec-target}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

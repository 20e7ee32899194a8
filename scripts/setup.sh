#!/usr/bin/env bash
# Installs what building authsec needs on a fresh Debian machine that has only Rust:
# libclang (RocksDB's bindings), a C++ compiler, and protoc (tonic's code generation).
# Safe to run again: it installs only what is missing.
set -euo pipefail

need=()
command -v protoc >/dev/null 2>&1 || need+=(protobuf-compiler)
command -v c++ >/dev/null 2>&1 || need+=(g++)
# libclang itself, the unversioned name clang-sys looks for (libclang-dev's), not
# libclang-cpp, which LLVM's packages bring without it: a looser pattern takes one for the
# other, and RocksDB's build then fails for want of libclang.
have_libclang() {
  for f in /usr/lib/llvm-*/lib/libclang.so /usr/lib/*/libclang.so /usr/lib/*/libclang-[0-9]*.so; do
    [ -e "$f" ] && return 0
  done
  return 1
}
have_libclang || need+=(libclang-dev clang)
for extra in "$@"; do
  dpkg -s "$extra" >/dev/null 2>&1 || need+=("$extra")
done

if [ ${#need[@]} -gt 0 ]; then
  echo "setup: installing ${need[*]}" >&2
  sudo=""
  [ "$(id -u)" -ne 0 ] && sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need[@]}" >/dev/null
fi

# The SVID acceptance script checks our credentials with other people's verifiers: openssl
# for X.509-SVIDs, PyJWT (in its own virtualenv, outside the clone) for JWT-SVIDs.
need=()
command -v openssl >/dev/null 2>&1 || need+=(openssl)
# The guide's commands (docs/guide, run by a test) use jq and curl.
command -v jq >/dev/null 2>&1 || need+=(jq)
command -v curl >/dev/null 2>&1 || need+=(curl)
command -v python3 >/dev/null 2>&1 || need+=(python3)
# The console's browser tests: Debian's Chromium and its WebDriver.
[ -x /usr/bin/chromium ] || need+=(chromium)
[ -x /usr/bin/chromedriver ] || need+=(chromium-driver)
python3 -c "import venv, ensurepip" >/dev/null 2>&1 || need+=(python3-venv)
if [ ${#need[@]} -gt 0 ]; then
  echo "setup: installing ${need[*]}" >&2
  sudo=""
  [ "$(id -u)" -ne 0 ] && sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need[@]}" >/dev/null
fi
py="${AUTHSEC_PY:-$HOME/.cache/authsec-py}"
if ! "$py/bin/python" -c "import jwt, cryptography" >/dev/null 2>&1; then
  echo "setup: making a Python virtualenv with PyJWT in $py" >&2
  python3 -m venv "$py"
  "$py/bin/pip" install --quiet --disable-pip-version-check "PyJWT[crypto]==2.10.1"
fi
# The guide's Python section: py-spiffe and Authlib, standard libraries authsec did not write.
if ! "$py/bin/python" -c "import spiffe, authlib, requests" >/dev/null 2>&1; then
  echo "setup: installing py-spiffe and Authlib in $py" >&2
  "$py/bin/pip" install --quiet --disable-pip-version-check \
    "spiffe==0.3.2" "authlib==1.9.10" "requests==2.32.5" "PyJWT[crypto]==2.10.1"
fi

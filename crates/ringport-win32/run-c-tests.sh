#!/usr/bin/env bash
# Builds libringport_win32.a in release, compiles the Windows-style examples
# and the C tests against crates/ringport-win32/include with g++ (and gcc for
# the plain-C test), and runs them on both backends. Exits non-zero on any
# failure. Run from anywhere; .ci/run calls it.
set -euo pipefail
cd "$(dirname "$0")/../.."

target="${CARGO_TARGET_DIR:-target}"
out="$target/win32-c"
mkdir -p "$out"

echo "== build libringport_win32.a in release, and the ringport binary (udp-blast)"
# The binary only feeds the RIO example: the debug build the tests made will
# do, and CI is spared a release build of the CLI and its peers.
cargo build --release -q -p ringport-win32
cargo build -q -p ringport-cli

inc=crates/ringport-win32/include
lib=(-L "$target/release" -l:libringport_win32.a -lpthread -ldl)
build_cpp() { g++ -O2 -Wall -Werror -I "$inc" "$1" "${lib[@]}" -o "$2"; }
build_c() { gcc -O2 -Wall -Werror -I "$inc" "$1" "${lib[@]}" -o "$2"; }

echo "== compile (g++ -I $inc ... -L $target/release -l:libringport_win32.a -lpthread -ldl)"
build_cpp crates/ringport-win32/examples/iocp_sum.cpp "$out/iocp_sum"
build_cpp crates/ringport-win32/examples/rio_udp_server.cpp "$out/rio_udp_server"
build_cpp crates/ringport-win32/tests/c/error_codes.cpp "$out/error_codes"
build_c crates/ringport-win32/tests/c/port_in_c.c "$out/port_in_c"

failed=0
fail() {
  echo "FAILED: $*"
  failed=1
}

for backend in io_uring epoll; do
  export RINGPORT_BACKEND=$backend
  echo "== $backend: iocp_sum"
  if timeout 120 "$out/iocp_sum" >"$out/sum.log" 2>&1; then
    grep -q '^the final results are \[499999500000\]$' "$out/sum.log" || fail "iocp_sum output ($backend)"
    head -n 2 "$out/sum.log"
  else
    cat "$out/sum.log"
    fail "iocp_sum ($backend)"
  fi

  echo "== $backend: error_codes"
  timeout 120 "$out/error_codes" || fail "error_codes ($backend)"
  echo "== $backend: port_in_c"
  timeout 120 "$out/port_in_c" || fail "port_in_c ($backend)"

  echo "== $backend: rio_udp_server fed by ringport load udp-blast"
  port=$((20000 + RANDOM % 20000))
  log="$out/rio_udp_server.$backend.log"
  timeout 150 "$out/rio_udp_server" "$port" 2 1024 >"$log" 2>&1 &
  server=$!
  for _ in $(seq 100); do
    grep -q '^ready' "$log" 2>/dev/null && break
    sleep 0.1
  done
  if grep -q '^ready' "$log"; then
    "$target/debug/ringport" load udp-blast --addr "127.0.0.1:$port" --count 200000 | tail -n 1 ||
      fail "udp-blast ($backend)"
  else
    fail "rio_udp_server did not start ($backend)"
  fi
  if wait "$server"; then
    sed -n '2,$p' "$log"
  else
    cat "$log"
    fail "rio_udp_server ($backend)"
  fi
done
unset RINGPORT_BACKEND

if [ "$failed" -ne 0 ]; then
  echo "== C tests FAILED"
  exit 1
fi
echo "== C tests passed on io_uring and epoll"

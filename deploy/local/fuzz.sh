#!/usr/bin/env bash
# Fuzzes every target in hostile/fuzz with libFuzzer (cargo-fuzz, nightly toolchain):
#
#   deploy/local/fuzz.sh [SECONDS] [TARGET...]   each target for SECONDS (default 60), or until
#                                                BOOMERANG_FUZZ_RUNS executions if that is set
#
# cargo-fuzz is installed once into ~/.cache/boomerang, keyed by its version and the nightly
# compiler. Each target starts from its committed seeds (hostile/fuzz/corpus/<target>/) and
# grows a working corpus under target/fuzz-corpus/<target>/. A crash stops the script: copy the
# input libFuzzer names into hostile/fuzz/regressions/<target>/, fix the cause, and the ordinary
# test suite replays it from then on. Prints one line per target: executions, seconds, result.
set -euo pipefail

repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
CARGO_FUZZ_VERSION=0.13.2
cache_dir=${BOOMERANG_CACHE_DIR:-$HOME/.cache/boomerang}
seconds=${1:-60}
[[ $# -gt 0 ]] && shift
say() { printf 'fuzz: %s\n' "$*" >&2; }

rustup run nightly rustc --version >/dev/null 2>&1 \
  || { say "error: the nightly toolchain is needed (rustup toolchain install nightly)"; exit 2; }
nightly_key=$(rustup run nightly rustc --version | sha256sum | cut -c1-12)
fuzz_root=$cache_dir/cargo-fuzz-$CARGO_FUZZ_VERSION-rustc-$nightly_key
if [[ ! -x $fuzz_root/bin/cargo-fuzz ]]; then
  mkdir -p "$cache_dir/logs"
  say "installing cargo-fuzz $CARGO_FUZZ_VERSION (once; log: $cache_dir/logs/install-cargo-fuzz.log)"
  cargo install cargo-fuzz --version "$CARGO_FUZZ_VERSION" --locked --root "$fuzz_root.partial" \
    >"$cache_dir/logs/install-cargo-fuzz.log" 2>&1
  rm -rf "$fuzz_root"
  mv "$fuzz_root.partial" "$fuzz_root"
fi
export PATH=$fuzz_root/bin:$PATH
# The fuzz build's own target directory, outside the repository and keyed by the compiler, so
# that a fresh clone (CI's) rebuilds only Boomerang's own crates.
target_dir=${BOOMERANG_FUZZ_TARGET_DIR:-$cache_dir/fuzz-target-rustc-$nightly_key}

cd "$repo_root/hostile"
targets=("$@")
if ((${#targets[@]} == 0)); then
  mapfile -t targets < <(cargo +nightly fuzz list)
fi
say "building ${#targets[@]} targets"
# No sanitizer: the workspace forbids unsafe code, so what the fuzzer must find is a panic, an
# overflow (debug assertions stay on), a hang or an allocation without bound, which libFuzzer
# reports by itself; without AddressSanitizer the build and every execution are about twice
# as fast.
cargo +nightly fuzz build --release --sanitizer none --target-dir "$target_dir" >&2

limit=(-max_total_time="$seconds")
[[ -n ${BOOMERANG_FUZZ_RUNS:-} ]] && limit=(-runs="$BOOMERANG_FUZZ_RUNS")
for target in "${targets[@]}"; do
  corpus=$repo_root/target/fuzz-corpus/$target
  mkdir -p "$corpus"
  log=$repo_root/target/fuzz-corpus/$target.log
  started=$SECONDS
  # -rss_limit_mb: a stage must not need more for one record; -timeout: nor take a second.
  if ! cargo +nightly fuzz run --release --sanitizer none --target-dir "$target_dir" \
    "$target" "$corpus" "fuzz/corpus/$target" -- \
    "${limit[@]}" -rss_limit_mb=2048 -timeout=10 -max_len=65536 -print_final_stats=1 \
    >"$log" 2>&1; then
    tail -n 40 "$log" >&2
    say "$target: FAILED (log: $log)"
    exit 1
  fi
  runs=$(grep -oE 'stat::number_of_executed_units: *[0-9]+' "$log" | grep -oE '[0-9]+$' | tail -n 1)
  printf '%-24s %12s executions in %5d s  ok\n' "$target" "${runs:-?}" "$((SECONDS - started))"
done

#!/usr/bin/env bash
# The test command. Brings the local stack up (installing and caching it on a fresh machine),
# runs the ClickHouse front end's own tests and `cargo test --workspace --no-fail-fast` against the stack, and
# brings the stack down again if this script started it. Extra arguments go to cargo test,
# e.g. deploy/local/test.sh -p boomerang-schemas.
set -euo pipefail

repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$repo_root"
stack=deploy/local/stack.sh

# Build everything first: a registry left idle for 10 minutes while tests compile stops being
# able to register schemas (see stack.sh), and the tests should start right after `up`.
echo "test: building the tests" >&2
cargo test --workspace --no-run "$@"

if $stack status >/dev/null 2>&1; then
  echo "test: using the local stack that is already running (left running afterwards)" >&2
else
  trap '$stack down' EXIT
fi
$stack up

echo "test: ClickHouse front end (deploy/local/chfront)" >&2
"$($stack python)" -m unittest discover --start-directory deploy/local/chfront --top-level-directory deploy/local/chfront

echo "test: cargo test --workspace" >&2
set -a
# shellcheck disable=SC1090
. "$($stack env)"
set +a
cargo test --workspace --no-fail-fast "$@"

#!/usr/bin/env bash
# The main job, end to end, on the local stack:
#
#   deploy/local/run.sh [--orders N] [--customers N] [--seed S]
#       brings the stack up if needed, builds the binaries, creates this run's topics, registers
#       the schemas, migrates a fresh ClickHouse database, starts ingest, enrich and sink (scraped
#       by the stack's Prometheus), exports a generated world of 70 days to files, loads them
#       with `boomerang backfill`, waits until every stage has drained and prints the report
#       beside the generator's ground truth. The stages keep
#       running afterwards, for Prometheus and for a look around.
#   deploy/local/run.sh stop
#       stops the stages a run started (and the stack, if a run started it).
#
# BOOMERANG_RUN_ROOT (default target/run) holds the runs' logs, pids and the mark that a run
# started the stack: `stop` stops only what runs under the same root started, so a test that
# runs this script under its own root never stops the person's stages or stack.
# BOOMERANG_RUN_HTTP_PORTS (default "9601 9602 9603") are the ports of ingest's, enrich's and
# the sink's /metrics and /readyz.
#
# Ctrl-C during a run stops what it started. Exit status: 0 when the report matches the ground
# truth, 1 when it does not, 2 when something failed on the way.
set -euo pipefail

repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$repo_root"
stack=deploy/local/stack.sh
run_root=${BOOMERANG_RUN_ROOT:-$repo_root/target/run}
pid_dir=$run_root/pids
read -r ingest_port enrich_port sink_port <<<"${BOOMERANG_RUN_HTTP_PORTS:-9601 9602 9603}"
[[ -n ${sink_port:-} ]] || { printf 'run: error: BOOMERANG_RUN_HTTP_PORTS needs three ports\n' >&2; exit 2; }

say() { printf 'run: %s\n' "$*" >&2; }
die() { say "error: $*"; exit 2; }

stop_stages() {
  local pid_file pid
  for pid_file in "$pid_dir"/*.pid; do
    [[ -f $pid_file ]] || continue
    pid=$(cat "$pid_file")
    if [[ -d /proc/$pid ]] && grep -q boomerang- "/proc/$pid/cmdline" 2>/dev/null; then
      kill -TERM "$pid" 2>/dev/null || true
      local deadline=$((SECONDS + 15))
      while [[ -d /proc/$pid ]] && ((SECONDS < deadline)); do sleep 0.1; done
      if [[ -d /proc/$pid ]]; then kill -KILL "$pid" 2>/dev/null || true; fi
      say "stopped $(basename "$pid_file" .pid) (pid $pid)"
    fi
    rm -f "$pid_file"
  done
}

stop_all() {
  stop_stages
  if [[ -f $run_root/stack-started-by-run ]]; then
    rm -f "$run_root/stack-started-by-run"
    $stack down
  fi
}

if [[ ${1:-} == stop ]]; then
  stop_all
  exit 0
fi

orders=50000
customers=10000
seed=42
while (($#)); do
  case $1 in
    --orders) orders=$2; shift 2 ;;
    --customers) customers=$2; shift 2 ;;
    --seed) seed=$2; shift 2 ;;
    *) die "unknown option $1 (try: [--orders N] [--customers N] [--seed S] | stop)" ;;
  esac
done

mkdir -p "$pid_dir"
stop_stages # a previous run's stages hold the ports
if ! $stack status >/dev/null 2>&1; then
  touch "$run_root/stack-started-by-run"
fi
trap 'say "interrupted: stopping what this run started"; stop_all; exit 130' INT TERM
# Build before `up`: the stack's schema registry stops accepting registrations after ten idle
# minutes (see stack.sh), which a cold release build can take; `up` checks and restarts it.
say "building the binaries (release)"
cargo build --release -p boomerang-ingest -p boomerang-enrich -p boomerang-sink -p boomerang-cli
bin=${CARGO_TARGET_DIR:-$repo_root/target}/release
$stack up

run_id=run-$(date -u +%Y%m%d-%H%M%S)
run_dir=$run_root/$run_id
mkdir -p "$run_dir/logs"
set -a
# shellcheck disable=SC1090
. "$($stack env)"
set +a
export BOOMERANG_RAW_EVENTS_TOPIC=$run_id.post-purchase.raw
export BOOMERANG_VALIDATED_EVENTS_TOPIC=$run_id.post-purchase.validated
export BOOMERANG_ENRICHED_EVENTS_TOPIC=$run_id.post-purchase.enriched
export BOOMERANG_CUSTOMERS_TOPIC=$run_id.crm.customers
export BOOMERANG_ORDERS_TOPIC=$run_id.oms.orders
export BOOMERANG_ERASURE_REQUESTS_TOPIC=$run_id.privacy.erasure-requests
# The sink's second pass over an erasure request: a local run's lag is short.
export BOOMERANG_ERASURE_SETTLE_SECS=${BOOMERANG_ERASURE_SETTLE_SECS:-5}
export BOOMERANG_DEAD_LETTER_TOPIC=$run_id.dead-letter
export BOOMERANG_CLICKHOUSE_DATABASE=boomerang_${run_id//-/_}
export BOOMERANG_PSEUDONYM_KEY=${BOOMERANG_PSEUDONYM_KEY:-local-run-pseudonym-key-not-a-secret}
export BOOMERANG_LOG_FORMAT=text

say "run $run_id: topics $run_id.*, ClickHouse database $BOOMERANG_CLICKHOUSE_DATABASE"
"$bin/boomerang" topics create --event-partitions 4 --reference-partitions 2 >/dev/null
"$bin/boomerang" schemas register >/dev/null
"$bin/boomerang" migrate >/dev/null

start_stage() {
  local stage=$1 port=$2
  shift 2
  # A static member: a stage restarted by hand gets its partitions back at once.
  "$bin/boomerang-$stage" --group-id "$run_id-$stage" --instance-id "$stage-0" \
    --http-listen "127.0.0.1:$port" "$@" \
    >"$run_dir/logs/$stage.log" 2>&1 &
  echo $! >"$pid_dir/$stage.pid"
}
# Ingest keeps its live limits (seven days of event age and of de-duplication): the world's
# months of history come in through `boomerang backfill`, reference data first, so enrich's
# wait for late reference data stays short too.
start_stage ingest "$ingest_port"
start_stage enrich "$enrich_port" --max-reference-wait-ms 5000
start_stage sink "$sink_port"

for stage_port in "ingest:$ingest_port" "enrich:$enrich_port" "sink:$sink_port"; do
  stage=${stage_port%%:*}
  port=${stage_port##*:}
  deadline=$((SECONDS + 120))
  until curl -fsS "http://127.0.0.1:$port/readyz" >/dev/null 2>&1; do
    pid=$(cat "$pid_dir/$stage.pid")
    [[ -d /proc/$pid ]] || die "$stage exited; see $run_dir/logs/$stage.log"
    ((SECONDS < deadline)) || die "$stage did not become ready in 120 s; see $run_dir/logs/$stage.log"
    sleep 0.2
  done
  say "$stage ready on http://127.0.0.1:$port (log: $run_dir/logs/$stage.log)"
done

say "exporting a world of $orders orders and $customers customers (seed $seed) to $run_dir/world"
"$bin/boomerang" gen --orders "$orders" --customers "$customers" --seed "$seed" \
  --truth "$run_dir/truth.json" --label "$run_id" --out "$run_dir/world" --out-format jsonl
say "backfilling it: customers and orders first, then 70 days of events"
"$bin/boomerang" backfill --from "$run_dir/world" --run-id "$run_id-history" --progress-secs 10 \
  --ingest-group "$run_id-ingest" --enrich-group "$run_id-enrich" --sink-group "$run_id-sink" ||
  die "the backfill did not reconcile; see above"

say "waiting for every stage to drain, then the report"
echo
status=0
"$bin/boomerang" report --truth "$run_dir/truth.json" --wait \
  --ingest-metrics "http://127.0.0.1:$ingest_port/metrics" \
  --enrich-metrics "http://127.0.0.1:$enrich_port/metrics" \
  --sink-metrics "http://127.0.0.1:$sink_port/metrics" || status=$?
echo
say "the stages keep running (Prometheus: $BOOMERANG_PROMETHEUS_URL); stop everything with: ${BOOMERANG_RUN_ROOT:+BOOMERANG_RUN_ROOT=$run_root }deploy/local/run.sh stop"
say "dead letters of this run: BOOMERANG_DEAD_LETTER_TOPIC=$BOOMERANG_DEAD_LETTER_TOPIC $bin/boomerang dlq inspect"
exit "$status"

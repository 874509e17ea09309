#!/usr/bin/env bash
# The chaos soak: the whole pipeline, two instances of each stage, under a seeded schedule of
# faults while a generated world is published at a steady rate with bursts; then a per-key
# verdict (`boomerang verify`) and the analytics against the generator's ground truth.
#
#   deploy/local/chaos.sh [--events N] [--rate R] [--seed S] [--kill-every SECONDS]
#                         [--clickhouse-outage SECONDS] [--registry-outage SECONDS]
#   deploy/local/chaos.sh --short        about 50k events, fewer and shorter faults (CI)
#
# Defaults: 1,000,000 events at 2,000 records/s, a kill -9 every 15 s. Faults, each logged with
# its time and target in target/chaos/<run>/faults.log:
#   kill -9 of a random stage instance, restarted at once with the same arguments (stages are
#   taken in a shuffled round, so every stage is hit); the time from each restart to the new
#   process's first completed batch (its offsets committed right after) is measured;
#   ClickHouse down (60 s), the schema registry down (30 s);
#   one instance paused (SIGSTOP) past its session timeout, then resumed (a zombie);
#   a broker restart (the soak's own stack keeps its records in SQLite);
#   a rolling SIGTERM restart of every instance;
#   after the verdict, the same world loaded again as history with `boomerang backfill`, ingest
#   back at its live seven-day limits, the backfill killed mid-publish and resumed while an
#   ingest and a sink are killed: every key still once, every figure the ground truth's;
#   then erasure requests for five customers with a sink killed and ClickHouse down while they
#   are applied.
# The soak runs its own stack (target/chaos/stack, ports 19192, 18181, 18223, 19190), so the
# stack of the README's first command is not touched. Exit status 0 when the verdict and the
# analytics hold; 1 when not; 2 when something failed on the way.
set -euo pipefail

repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$repo_root"

events=1000000
# Records per second: what this project's 2-core machines sustain with the SQLite broker, six
# instances, ClickHouse and the generator on one host, so that a restart is measured against a
# pipeline that keeps up. At 2,000/s the broker ran at 150% CPU, the pipeline fell minutes
# behind, and every restart waited for the broker (median 26 s).
rate=800
seed=7
kill_every=15
clickhouse_outage=60
registry_outage=30
while (($#)); do
  case $1 in
    --events) events=$2; shift 2 ;;
    --rate) rate=$2; shift 2 ;;
    --seed) seed=$2; shift 2 ;;
    --kill-every) kill_every=$2; shift 2 ;;
    --clickhouse-outage) clickhouse_outage=$2; shift 2 ;;
    --registry-outage) registry_outage=$2; shift 2 ;;
    --short)
      events=50000 rate=600 kill_every=5 clickhouse_outage=15 registry_outage=8
      shift
      ;;
    *) printf 'chaos: unknown option %s\n' "$1" >&2; exit 2 ;;
  esac
done

say() { printf 'chaos: [%4ds] %s\n' "$SECONDS" "$*" >&2; }
die() { say "error: $*"; exit 2; }

# The soak's own stack.
export BOOMERANG_STACK_DIR=$repo_root/target/chaos/stack
export BOOMERANG_KAFKA_PORT=${BOOMERANG_CHAOS_KAFKA_PORT:-19192}
export BOOMERANG_REGISTRY_PORT=${BOOMERANG_CHAOS_REGISTRY_PORT:-18181}
export BOOMERANG_CLICKHOUSE_PORT=${BOOMERANG_CHAOS_CLICKHOUSE_PORT:-18223}
export BOOMERANG_PROMETHEUS_PORT=${BOOMERANG_CHAOS_PROMETHEUS_PORT:-19190}
stack() { deploy/local/stack.sh "$@"; }

run_id=chaos-$(date -u +%Y%m%d-%H%M%S)
run_dir=$repo_root/target/chaos/$run_id
mkdir -p "$run_dir/logs"
faults=$run_dir/faults.log
: >"$faults"
fault() {
  printf '%s %6ds %s\n' "$(date -u +%H:%M:%S)" "$SECONDS" "$*" >>"$faults"
  say "fault: $*"
}

say "building the binaries (release)"
cargo build --release -p boomerang-ingest -p boomerang-enrich -p boomerang-sink -p boomerang-cli
bin=${CARGO_TARGET_DIR:-$repo_root/target}/release
stack_started=no
if ! stack status >/dev/null 2>&1; then
  stack_started=yes
  # A soak that starts its stack starts it empty: the SQLite broker otherwise keeps every
  # earlier run's topics (7 GB after a few 1M runs), which slowed it down and once left the
  # registry a _schemas topic it could not read.
  stack clean >/dev/null
fi
stack up --sqlite

set -a
# shellcheck disable=SC1090
. "$(stack env)"
set +a
export BOOMERANG_RAW_EVENTS_TOPIC=$run_id.raw
export BOOMERANG_VALIDATED_EVENTS_TOPIC=$run_id.validated
export BOOMERANG_ENRICHED_EVENTS_TOPIC=$run_id.enriched
export BOOMERANG_CUSTOMERS_TOPIC=$run_id.customers
export BOOMERANG_ORDERS_TOPIC=$run_id.orders
export BOOMERANG_ERASURE_REQUESTS_TOPIC=$run_id.erasure-requests
export BOOMERANG_DEAD_LETTER_TOPIC=$run_id.dead-letter
export BOOMERANG_CLICKHOUSE_DATABASE=boomerang_${run_id//-/_}
export BOOMERANG_PSEUDONYM_KEY=chaos-soak-pseudonym-key-not-a-secret
# The sinks' second pass over an erasure request: the soak's lag at the erasure phase is short.
export BOOMERANG_ERASURE_SETTLE_SECS=5
export BOOMERANG_LOG_FORMAT=text
# Default retention (7 days), which the SQLite broker applies at every start: the world's
# events lie up to months back, and the validated and enriched records once carried that
# event time as their timestamp, so the broker restart deleted them. They are timestamped
# when produced now; a regression shows here as lost keys.
"$bin/boomerang" topics create --event-partitions 4 --reference-partitions 2 >/dev/null
"$bin/boomerang" schemas register >/dev/null
"$bin/boomerang" migrate >/dev/null

# Six instances: NAME STAGE PORT. Each is a static member with its own instance id.
instances=(ingest-0 ingest-1 enrich-0 enrich-1 sink-0 sink-1)
declare -A pids ports peak_rss
port=9711
for name in "${instances[@]}"; do
  ports[$name]=$port
  port=$((port + 1))
  peak_rss[$name]=0
done
stage_of() { echo "${1%-*}"; }
# The live world spans months: ingest's windows widened to a year until the backfill phase,
# which restarts it at its live limits.
ingest_windows="--max-event-age-secs 31536000 --dedup-window-secs 31536000"
arguments_of() {
  local name=$1 stage
  stage=$(stage_of "$name")
  echo "--group-id $run_id-$stage --instance-id $name --http-listen 127.0.0.1:${ports[$name]}"
  # Ingest and enrich keep local snapshots of their state, each instance in its own directory
  # (as on its own volume), so that a restart reads back only what was written since.
  case $stage in
    ingest) echo "${ingest_windows} --state-dir $run_dir/state/$name" ;;
    enrich) echo "--max-reference-wait-ms 15000 --state-dir $run_dir/state/$name" ;;
    sink) echo "" ;;
  esac
}
start_instance() {
  local name=$1
  # Each instance in its own session: a stopped (SIGSTOP) instance must not make the soak's
  # process group an orphaned group with a stopped member, which the kernel hangs up.
  # shellcheck disable=SC2046 # the arguments are words by design
  setsid "$bin/boomerang-$(stage_of "$name")" $(arguments_of "$name") \
    >>"$run_dir/logs/$name.log" 2>&1 &
  pids[$name]=$!
}
note_rss() {
  local name=$1 pid kib
  pid=${pids[$name]}
  kib=$(sed -n 's/^VmHWM:[[:space:]]*\([0-9]*\) kB/\1/p' "/proc/$pid/status" 2>/dev/null || true)
  if [[ -n $kib ]] && ((kib > peak_rss[$name])); then peak_rss[$name]=$kib; fi
}
# Records the instance has received in completed batches (counted when a batch completes, just
# before its offsets are committed).
completed_of() { metric_of "$1" boomerang_received_events_total; }
# The sum of an instance's series whose name, with labels, starts with SERIES (labels are
# rendered sorted by name, `stage` among them).
metric_of() {
  { curl -fsS "http://127.0.0.1:${ports[$1]}/metrics" 2>/dev/null || true; } \
    | awk -v series="$2" 'index($1, series) == 1 && substr($1, length(series) + 1, 1) ~ /^[{,]?$/ {sum += $2} END {print sum + 0}'
}
# The other instance of the same stage.
partner_of() { echo "${1%-*}-$((1 - ${1##*-}))"; }
# Polls, in the background, until a restarted instance has completed a batch; records the
# seconds from its restart.
# A dependency outage in progress is named in this file. A restart whose wait overlaps one is
# marked: it cannot commit before the dependency is back, by design.
outage_file=$run_dir/outage
set_outage() {
  if [[ -n $1 ]]; then echo "$1" >"$outage_file"; else rm -f "$outage_file"; fi
}
measure_recovery() {
  local name=$1 since=$2 pid=${pids[$1]}
  (
    deadline=$((since + 180))
    mark=
    while ((SECONDS < deadline)) && [[ -d /proc/$pid ]]; do
      [[ -f $outage_file ]] && mark=" during-$(cat "$outage_file" 2>/dev/null)-outage"
      if [[ $(completed_of "$name") -gt 0 ]] 2>/dev/null; then
        echo "$name $((SECONDS - since))$mark" >>"$run_dir/recovery.txt"
        exit 0
      fi
      sleep 0.2
    done
    if [[ -d /proc/$pid ]]; then
      echo "$name none" >>"$run_dir/recovery.txt"
    else
      echo "$name killed-again" >>"$run_dir/recovery.txt" # by the soak, before it could commit
    fi
  ) &
}
# Stops an instance with SIGTERM, and with SIGKILL if it has not exited 20 s later (a stage
# that does not stop when asked is a finding: it is logged as one).
stop_instance() {
  local name=$1 pid=${pids[$1]:-} deadline
  [[ -n $pid ]] || return 0
  kill -TERM "$pid" 2>/dev/null || return 0
  deadline=$((SECONDS + 20))
  while [[ -d /proc/$pid ]] && ((SECONDS < deadline)); do sleep 0.1; done
  if [[ -d /proc/$pid ]]; then
    fault "FINDING: $name did not stop 20 s after SIGTERM; killed"
    kill -KILL "$pid" 2>/dev/null || true
  fi
  wait "$pid" 2>/dev/null || true
}
stop_everything() {
  local name
  for name in "${instances[@]}"; do stop_instance "$name"; done
  if [[ $stack_started == yes ]]; then stack down; fi
}
trap stop_everything EXIT
trap 'say "interrupted"; exit 130' INT TERM

for name in "${instances[@]}"; do start_instance "$name"; done
for name in "${instances[@]}"; do
  deadline=$((SECONDS + 180))
  until curl -fsS "http://127.0.0.1:${ports[$name]}/readyz" >/dev/null 2>&1; do
    [[ -d /proc/${pids[$name]} ]] || die "$name exited; see $run_dir/logs/$name.log"
    ((SECONDS < deadline)) || die "$name not ready in 180 s"
    sleep 0.2
  done
done
say "six instances ready; publishing about $events events at $rate records/s (seed $seed)"

orders=$((events * 100 / 186))
customers=$((orders / 5 + 1))
"$bin/boomerang" gen --orders "$orders" --customers "$customers" --seed "$seed" --rate "$rate" \
  --truth "$run_dir/truth.json" --keys "$run_dir/keys.txt" --label "$run_id" \
  >"$run_dir/logs/gen.log" 2>&1 &
gen_pid=$!

RANDOM=$seed
kills=0
round=()
# Sets `victim`: stages are taken in a shuffled round, so every stage is hit in turn. (Not a
# command substitution: a subshell would lose the round and the random state.)
victim=
next_victim() {
  if ((${#round[@]} == 0)); then
    round=(ingest enrich sink)
    local i j tmp
    for ((i = 2; i > 0; i--)); do
      j=$((RANDOM % (i + 1)))
      tmp=${round[i]} round[i]=${round[j]} round[j]=$tmp
    done
  fi
  local stage=${round[0]}
  round=("${round[@]:1}")
  victim="$stage-$((RANDOM % 2))"
}
# kill -9 of VICTIM, restarted at once with the same arguments; WHEN says what it was doing.
kill_instance() {
  local victim=$1 when=${2:-}
  note_rss "$victim"
  fault "kill -9 $victim (pid ${pids[$victim]})${when:+ $when}"
  kill -KILL "${pids[$victim]}" 2>/dev/null || true
  wait "${pids[$victim]}" 2>/dev/null || true
  start_instance "$victim"
  measure_recovery "$victim" "$SECONDS"
  kills=$((kills + 1))
}
# Every other enrich kill, the restarted instance is killed again while it reads its
# reference tables back.
enrich_kills=0
kill_one() {
  local deadline
  next_victim
  kill_instance "$victim"
  if [[ $(stage_of "$victim") == enrich ]] && ((enrich_kills++ % 2 == 0)); then
    deadline=$((SECONDS + 30))
    until curl -sS "http://127.0.0.1:${ports[$victim]}/readyz" 2>/dev/null | grep -q "catching up"; do
      ((SECONDS < deadline)) || return 0
      sleep 0.1
    done
    kill_instance "$victim" "during its reference catch-up"
  fi
}

# Notes each instance's peak RSS, and restarts one that stopped by itself (a fenced zombie does,
# by design), as a supervisor would.
supervise() {
  local name
  for name in "${instances[@]}"; do
    note_rss "$name"
    if [[ ! -d /proc/${pids[$name]} ]]; then
      fault "$name exited by itself; restarting it (see its log)"
      start_instance "$name"
    fi
  done
}

# The one-off faults, in an order drawn from the seed, spread over the publishing time.
one_offs=(clickhouse registry zombie broker rolling)
for ((i = ${#one_offs[@]} - 1; i > 0; i--)); do
  j=$((RANDOM % (i + 1)))
  tmp=${one_offs[i]} one_offs[i]=${one_offs[j]} one_offs[j]=$tmp
done
duration=$((events / rate + 1))
step=$((duration / (${#one_offs[@]} + 1)))
((step > 0)) || step=1
next_one_off=$((SECONDS + step))
next_kill=$((SECONDS + kill_every))
one_off_index=0

one_off() {
  case $1 in
    clickhouse)
      fault "ClickHouse down for ${clickhouse_outage}s"
      stack stop clickhouse
      set_outage clickhouse
      sleep $((clickhouse_outage / 2))
      kill_instance "sink-$((RANDOM % 2))" "while its inserts wait for ClickHouse"
      sleep $((clickhouse_outage - clickhouse_outage / 2))
      stack up --sqlite >/dev/null 2>&1
      set_outage ""
      fault "ClickHouse up"
      ;;
    registry)
      fault "schema registry down for ${registry_outage}s"
      stack stop registry
      set_outage registry
      sleep "$registry_outage"
      stack up --sqlite >/dev/null 2>&1
      set_outage ""
      fault "schema registry up"
      ;;
    zombie)
      local victim
      victim=sink-$((RANDOM % 2))
      fault "SIGSTOP $victim for 16s (session timeout 10s)"
      kill -STOP "${pids[$victim]}"
      sleep 16
      kill -CONT "${pids[$victim]}"
      fault "SIGCONT $victim"
      # Its return starts a rebalance: its partner dies in the middle of it.
      kill_instance "$(partner_of "$victim")" "during the rebalance the zombie's return starts"
      ;;
    broker)
      fault "broker restart (SQLite storage)"
      stack stop kafka
      set_outage broker
      stack up --sqlite >/dev/null 2>&1
      set_outage ""
      fault "broker up"
      ;;
    rolling)
      # Static members: a restarted instance takes its own partitions back and its partner
      # is never rebalanced. Partitions a partner gives up meanwhile are a finding (a
      # rebalance is eager: it revokes every partition of every member). A partner's own
      # first assignment after it was itself restarted is not a move.
      local name partner before after moved=0 which=""
      # First the group whole again: an instance that stopped by itself (a fenced zombie)
      # back, and every instance owning partitions, or its joining would count as a move.
      supervise
      for name in "${instances[@]}"; do
        deadline=$((SECONDS + 60))
        until [[ $(metric_of "$name" boomerang_owned_partitions) -gt 0 ]]; do
          ((SECONDS < deadline)) || break
          sleep 0.2
        done
      done
      fault "rolling SIGTERM restart of every instance"
      for name in "${instances[@]}"; do
        partner=$(partner_of "$name")
        before=$(metric_of "$partner" 'boomerang_partition_changes_total{change="revoked"')
        note_rss "$name"
        stop_instance "$name"
        start_instance "$name"
        deadline=$((SECONDS + 60))
        until [[ $(metric_of "$name" boomerang_owned_partitions) -gt 0 ]]; do
          ((SECONDS < deadline)) || break
          sleep 0.2
        done
        after=$(metric_of "$partner" 'boomerang_partition_changes_total{change="revoked"')
        if ((after > before)); then
          moved=$((moved + after - before))
          which+=" $partner:$((after - before))(restarting $name)"
        fi
      done
      if ((moved > 0)); then
        fault "FINDING: the rolling restart made instances not restarted give up $moved partitions:$which"
      else
        fault "rolling restart done; no partition moved"
      fi
      ;;
  esac
}

while [[ -d /proc/$gen_pid ]]; do
  if ((SECONDS >= next_kill)); then
    kill_one
    next_kill=$((SECONDS + kill_every))
  fi
  if ((one_off_index < ${#one_offs[@]} && SECONDS >= next_one_off)); then
    one_off "${one_offs[one_off_index]}"
    one_off_index=$((one_off_index + 1))
    next_one_off=$((SECONDS + step))
    # And a kill right after each, as the system recovers from it.
    kill_one
    next_kill=$((SECONDS + kill_every))
  fi
  supervise
  sleep 0.5
done
wait "$gen_pid" || die "the generator failed; see $run_dir/logs/gen.log"
# Whatever one-off fault the publishing outran still happens, before the drain.
while ((one_off_index < ${#one_offs[@]})); do
  one_off "${one_offs[one_off_index]}"
  one_off_index=$((one_off_index + 1))
  kill_one
done
say "published; $kills kills; waiting for the pipeline to drain"

"$bin/boomerang" verify --truth "$run_dir/truth.json" --keys "$run_dir/keys.txt" \
  --wait-drained --group-prefix "$run_id" --summary "$run_dir/verdict.json" \
  >"$run_dir/verdict.txt" 2>&1 &
verify_pid=$!
# Supervised while the pipeline drains too.
while [[ -d /proc/$verify_pid ]]; do
  supervise
  sleep 0.5
done
wait "$verify_pid" && verdict=0 || verdict=$?
for name in "${instances[@]}"; do note_rss "$name"; done
"$bin/boomerang" report --truth "$run_dir/truth.json" --no-stages >"$run_dir/report.txt" 2>&1 \
  && analytics=0 || analytics=$?

clickhouse_query() {
  curl -sS --fail "$BOOMERANG_CLICKHOUSE_URL/?database=$BOOMERANG_CLICKHOUSE_DATABASE" --data-binary "$1"
}
# History under faults: the same world, exported as files and loaded with `boomerang backfill`
# — a second copy of every event, which must all be de-duplicated: inside ingest's live window
# by ingest, older ones by the sink against ClickHouse. Ingest first restarts at its live limits
# (seven days), as a pipeline that takes history in runs. The backfill is killed with -9 once
# it has published a first chunk and run again, which resumes from its checkpoint; an ingest and
# a sink are killed meanwhile. Then, per key: every valid key of the export in ClickHouse
# exactly once (none lost, none doubled, none unexpected), and the report is the export's
# ground truth's. (The export is the world rebuilt minutes later: the same events, its clock
# later by as much, plus the few whose time has come since; every duration is the same.)
backfill=0
backfill_log=$run_dir/backfill.txt
: >"$backfill_log"
ingest_windows=""
for name in ingest-0 ingest-1; do
  stop_instance "$name"
  start_instance "$name"
done
fault "ingest restarted at its live limits for the backfill"
# The very world the live run published, times included (as of the same moment): a figure that
# depends on the clock, such as open refunds past the SLA, is then the same in both truths.
as_of=$(grep -o '"as_of_micros": *[0-9]*' "$run_dir/truth.json" | grep -o '[0-9]*$')
"$bin/boomerang" gen --orders "$orders" --customers "$customers" --seed "$seed" --as-of-micros "$as_of" \
  --out "$run_dir/world" --truth "$run_dir/world-truth.json" --keys "$run_dir/world-keys.txt" \
  >>"$backfill_log" 2>&1 || die "exporting the world failed; see $backfill_log"
# exec: `$!` is then the backfill itself, which the fault below kills.
backfill_once() {
  exec "$bin/boomerang" backfill --from "$run_dir/world" --run-id "$run_id-history" \
    --ingest-group "$run_id-ingest" --enrich-group "$run_id-enrich" --sink-group "$run_id-sink" \
    --progress-secs 5 --rate 2000 --checkpoint-every 5000 >>"$backfill_log" 2>&1
}
backfill_once &
backfill_pid=$!
checkpoint=$run_dir/world/.boomerang-backfill.json
deadline=$((SECONDS + 120))
# The first checkpoint with events in it: the run is part-way through the events file.
# (The braces: a redirection's own failure, the checkpoint not written yet, is silenced too.)
until { tr -d ' \n' <"$checkpoint"; } 2>/dev/null | grep -q '"events":{"read":[1-9]'; do
  ((SECONDS < deadline)) || die "the backfill published nothing in 120 s; see $backfill_log"
  supervise
  sleep 0.2
done
fault "kill -9 boomerang backfill (pid $backfill_pid) after its first checkpoint"
kill -KILL "$backfill_pid" 2>/dev/null || true
wait "$backfill_pid" 2>/dev/null || true
kill_instance "ingest-$((RANDOM % 2))" "during the backfill"
backfill_once &
backfill_pid=$!
sleep 2
kill_instance "sink-$((RANDOM % 2))" "during the backfill"
while [[ -d /proc/$backfill_pid ]]; do
  supervise
  sleep 0.5
done
wait "$backfill_pid" || { echo "the resumed backfill did not reconcile" >>"$backfill_log"; backfill=1; }
grep -q "resuming run $run_id-history" "$backfill_log" || { echo "the second run did not resume" >>"$backfill_log"; backfill=1; }
clickhouse_query "DROP TABLE IF EXISTS chaos_expected_keys" >/dev/null
clickhouse_query "CREATE TABLE chaos_expected_keys (key String) ENGINE = Memory" >/dev/null
curl -sS --fail "$BOOMERANG_CLICKHOUSE_URL/?database=$BOOMERANG_CLICKHOUSE_DATABASE&query=INSERT%20INTO%20chaos_expected_keys%20FORMAT%20TSV" \
  --data-binary @"$run_dir/world-keys.txt" >/dev/null
lost=$(clickhouse_query "SELECT count() FROM chaos_expected_keys WHERE key NOT IN (SELECT idempotency_key FROM post_purchase_events)")
unexpected=$(clickhouse_query "SELECT count() FROM post_purchase_events WHERE idempotency_key NOT IN (SELECT key FROM chaos_expected_keys)")
doubled=$(clickhouse_query "SELECT count() FROM (SELECT idempotency_key FROM post_purchase_events GROUP BY idempotency_key HAVING count() > 1)")
history_rows=$(clickhouse_query "SELECT count() FROM post_purchase_events WHERE backfill_run != ''")
echo "keys of the export: $(wc -l <"$run_dir/world-keys.txt"); lost $lost, doubled $doubled, unexpected $unexpected; rows the backfill wrote (events new since the live run): $history_rows" >>"$backfill_log"
if ((lost != 0 || doubled != 0 || unexpected != 0)); then backfill=1; fi
"$bin/boomerang" report --truth "$run_dir/world-truth.json" --no-stages >"$run_dir/report-after-backfill.txt" 2>&1 \
  || backfill=1

# Erasures under faults: once the verdict is in, a few customers ask to be forgotten while a
# sink is killed mid-request and ClickHouse goes down; afterwards `boomerang erase --verify`
# finds nothing linkable to any of them, every request is complete, no row is doubled or lost
# (anonymised rows replace the originals one for one), and every analytics figure is still the
# ground truth's (the report again).
erased=(cus-0000001 cus-0000002 cus-0000003 cus-0000004 cus-0000005)
erasure=0
erasure_log=$run_dir/erasure.txt
: >"$erasure_log"
rows_before=$(clickhouse_query "SELECT count() FROM post_purchase_events")
linkable_before=0
for customer in "${erased[@]}"; do
  "$bin/boomerang" erase --verify --customer-id "$customer" >>"$erasure_log" 2>&1 \
    || linkable_before=$((linkable_before + 1))
done
for customer in "${erased[@]}"; do
  "$bin/boomerang" erase --customer-id "$customer" --requested-by chaos-soak >>"$erasure_log" 2>&1 \
    || die "filing an erasure request failed; see $erasure_log"
done
fault "erasure requests for ${#erased[@]} customers ($linkable_before with rows)"
sleep 1
kill_instance "sink-$((RANDOM % 2))" "while the sinks apply erasure requests"
fault "ClickHouse down for 5s during the erasures"
stack stop clickhouse
set_outage clickhouse
sleep 5
kill_instance "sink-$((RANDOM % 2))" "while its erasure waits for ClickHouse"
stack up --sqlite >/dev/null 2>&1
set_outage ""
fault "ClickHouse up"
deadline=$((SECONDS + 240))
pending=("${erased[@]}")
while ((${#pending[@]} > 0)); do
  supervise
  still=()
  for customer in "${pending[@]}"; do
    if ! "$bin/boomerang" erase --verify --customer-id "$customer" >"$run_dir/erase-verify.txt" 2>&1 \
      || ! grep -q ': applied, anonymised' "$run_dir/erase-verify.txt"; then
      still+=("$customer")
    fi
  done
  pending=("${still[@]}")
  if ((${#pending[@]} > 0)); then
    if ((SECONDS > deadline)); then
      echo "not erased in 240 s: ${pending[*]}" >>"$erasure_log"
      cat "$run_dir/erase-verify.txt" >>"$erasure_log"
      erasure=1
      break
    fi
    sleep 1
  fi
done
rows_after=$(clickhouse_query "SELECT count() FROM post_purchase_events")
doubled=$(clickhouse_query "SELECT count() FROM (SELECT idempotency_key FROM post_purchase_events GROUP BY idempotency_key HAVING count() > 1)")
anonymised=$(clickhouse_query "SELECT count() FROM post_purchase_events WHERE customer_key LIKE 'erased_%'")
echo "event rows before $rows_before, after $rows_after; keys with more than one row: $doubled; anonymised rows: $anonymised" >>"$erasure_log"
if ((rows_after != rows_before || doubled != 0 || linkable_before == 0)); then
  erasure=1
fi
"$bin/boomerang" report --truth "$run_dir/world-truth.json" --no-stages >"$run_dir/report-after-erasure.txt" 2>&1 \
  || erasure=1

echo
echo "Chaos soak $run_id: $events events requested at $rate/s, seed $seed, $((SECONDS)) s"
echo "Faults ($kills kills):"
sed 's/^/  /' "$faults"
echo
echo "Restart to first completed (and committed) batch, s:"
sort "$run_dir/recovery.txt" 2>/dev/null | sed 's/^/  /' || true
median_of() {
  local times count
  times=$(awk "$1"' && $2 ~ /^[0-9]+$/ {print $2}' "$run_dir/recovery.txt" 2>/dev/null | sort -n)
  [[ -n $times ]] || { echo "n/a over 0 restarts"; return; }
  count=$(wc -l <<<"$times")
  echo "$(sed -n "$(((count + 1) / 2))p" <<<"$times") s over $count restarts"
}
echo "  median $(median_of 'NF == 2') with every dependency up;" \
  "$(median_of 'NF >= 2') in all;" \
  "$(grep -c ' none' "$run_dir/recovery.txt" || true) never committed"
echo
echo "Peak RSS per instance (MiB):"
for name in "${instances[@]}"; do printf '  %-9s %6d\n' "$name" "$((peak_rss[$name] / 1024))"; done
echo
cat "$run_dir/verdict.txt"
echo
tail -n 40 "$run_dir/report.txt"
echo
echo "History under faults (the world again via boomerang backfill, killed and resumed; an ingest and a sink killed):"
grep -E "^  (events|customers|orders|reconciled|NOT)|^keys of the export" "$backfill_log" | sed 's/^ */  /'
if ((backfill == 0)); then
  echo "  every key once, the backfill reconciled after its resume, every figure the export's ground truth's"
else
  echo "  FAILED: see $backfill_log and $run_dir/report-after-backfill.txt"
fi
echo
echo "Erasures under faults (${#erased[@]} customers; a sink killed, ClickHouse down 5 s):"
tail -n 1 "$erasure_log" | sed 's/^/  /'
if ((erasure == 0)); then
  echo "  every customer erased, every request complete, every figure still the ground truth's"
else
  echo "  FAILED: see $erasure_log and $run_dir/report-after-erasure.txt"
fi
echo
echo "Logs, faults, verdict.json: $run_dir"
if grep -q FINDING "$faults"; then
  echo "FINDINGS: see the faults above"
  verdict=1
fi
if ((verdict != 0 || analytics != 0 || backfill != 0 || erasure != 0)); then
  echo "CHAOS SOAK FAILED"
  exit 1
fi
echo "CHAOS SOAK PASSED"

#!/usr/bin/env bash
# The local stack: a Kafka-protocol broker, a Confluent-API schema registry, the ClickHouse engine
# behind our HTTP front end, and Prometheus, all on loopback, installed and cached on first use.
#
#   deploy/local/stack.sh up [--sqlite]   install what is missing, start what is not running, wait
#                                         until healthy, write the endpoints to the env file
#   deploy/local/stack.sh down            stop exactly the processes this script started
#   deploy/local/stack.sh stop PART       stop one part (kafka, registry, clickhouse, prometheus);
#                                         `up` starts it again (tests use it to simulate outages)
#   deploy/local/stack.sh status          say what runs where
#   deploy/local/stack.sh install         only install (warm the cache)
#   deploy/local/stack.sh env             print the env file's path
#   deploy/local/stack.sh python          print the path of the front end's Python (for its tests)
#   deploy/local/stack.sh clean           down, then delete the stack's state (data, logs)
#
# Everything is overridable by environment variable; see the defaults below and README.md.
set -euo pipefail

repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)

NISSHI_VERSION=0.8.1
CRABKA_VERSION=0.3.0
CHDB_VERSION=26.9.0
# What the ClickHouse front end (deploy/local/chfront) runs on; the venv is keyed by this list.
PYTHON_REQUIREMENTS="chdb-core==$CHDB_VERSION lz4==4.4.4 clickhouse-cityhash==1.0.2.6"

cache_dir=${BOOMERANG_CACHE_DIR:-$HOME/.cache/boomerang}
state_dir=${BOOMERANG_STACK_DIR:-$repo_root/target/stack}
kafka_port=${BOOMERANG_KAFKA_PORT:-19092}
registry_port=${BOOMERANG_REGISTRY_PORT:-18081}
clickhouse_port=${BOOMERANG_CLICKHOUSE_PORT:-18123}
prometheus_port=${BOOMERANG_PROMETHEUS_PORT:-19090}
# Seconds each part may take to become healthy after it starts.
health_deadline=${BOOMERANG_STACK_HEALTH_DEADLINE:-60}

env_file=$state_dir/stack.env
log_dir=$state_dir/logs
pid_dir=$state_dir/pids
data_dir=$state_dir/data

say() { printf 'stack: %s\n' "$*" >&2; }
die() {
  printf 'stack: error: %s\n' "$*" >&2
  exit 1
}

# Built tools are keyed by the compiler that built them: a new rustc gets a fresh build.
rust_key() { rustc --version | sha256sum | cut -c1-12; }
python_key() { python3 -c 'import sys; print("py%d.%d" % sys.version_info[:2])'; }

nisshi_bin() { echo "$cache_dir/nisshi-$NISSHI_VERSION-rustc-$(rust_key)/bin/nisshi"; }
registry_bin() { echo "$cache_dir/crabka-schema-registry-$CRABKA_VERSION-rustc-$(rust_key)/bin/crabka-schema-registry"; }
chdb_venv() { echo "$cache_dir/chfront-$(python_key)-$(echo "$PYTHON_REQUIREMENTS" | sha256sum | cut -c1-12)/venv"; }

# ---------------------------------------------------------------------------------------------
# install

# Moves a freshly built binary into the cache in one rename, so an interrupted build never
# leaves a half-written binary that a later run would trust.
publish_binary() {
  local built=$1 target=$2
  mkdir -p "$(dirname "$target")"
  cp "$built" "$target.partial"
  mv "$target.partial" "$target"
}

install_nisshi() {
  local target
  target=$(nisshi_bin)
  [[ -x $target ]] && return 0
  command -v cargo >/dev/null || die "cargo is needed to build nisshi; install Rust (rustup) first"
  local work
  work=$(mktemp -d "${TMPDIR:-/tmp}/boomerang-nisshi.XXXXXX")
  mkdir -p "$cache_dir/logs"
  local log=$cache_dir/logs/install-nisshi-$NISSHI_VERSION.log
  say "installing nisshi $NISSHI_VERSION (Kafka-protocol broker; about 15 min on 2 cores, once per rustc version; log: $log)"
  # --ignore-rust-version: a dependency declares rustc 1.96, and it builds and runs on 1.95.
  if ! cargo install nisshi --version "$NISSHI_VERSION" --locked --ignore-rust-version \
    --root "$work/root" --target-dir "$work/target" >"$log" 2>&1; then
    rm -rf "$work"
    die "installing nisshi failed; the last lines of $log say why. Fix that (disk space, network to crates.io) and run 'stack.sh up' again"
  fi
  publish_binary "$work/root/bin/nisshi" "$target"
  rm -rf "$work"
  say "nisshi installed at $target"
}

# crabka-schema-registry 0.3.0 is yanked (the project was renamed and retired), and so is every
# version of the crabka crates it needs: cargo takes a yanked version only when a lock file names
# it, so pin_yanked.py writes that lock for a throwaway manifest, cargo fetches the crate's own
# published sources, and we install from them with their own published lock file.
install_registry() {
  local target
  target=$(registry_bin)
  [[ -x $target ]] && return 0
  command -v cargo >/dev/null || die "cargo is needed to build the schema registry; install Rust (rustup) first"
  local work
  work=$(mktemp -d "${TMPDIR:-/tmp}/boomerang-registry.XXXXXX")
  mkdir -p "$cache_dir/logs"
  local log=$cache_dir/logs/install-crabka-schema-registry-$CRABKA_VERSION.log
  say "installing crabka-schema-registry $CRABKA_VERSION (Confluent-API schema registry; about 6 min on 2 cores; log: $log)"
  # A subshell with errexit: under `if !` bash would switch errexit off inside the function.
  if ! (set -e; build_registry "$work" "$target") >"$log" 2>&1; then
    rm -rf "$work"
    die "installing crabka-schema-registry failed; the last lines of $log say why. Fix that and run 'stack.sh up' again"
  fi
  rm -rf "$work"
  say "crabka-schema-registry installed at $target"
}

build_registry() {
  local work=$1 target=$2
  mkdir -p "$work/pin/src"
  cat >"$work/pin/Cargo.toml" <<EOF
[package]
name = "boomerang-registry-pin"
version = "0.0.0"
edition = "2021"
publish = false

[dependencies]
crabka-schema-registry = "=$CRABKA_VERSION"
EOF
  : >"$work/pin/src/lib.rs"
  python3 "$repo_root/deploy/local/pin_yanked.py" "$work/pin" crabka-schema-registry "$CRABKA_VERSION" crabka-
  (cd "$work/pin" && cargo fetch)
  local src
  src=$(find "${CARGO_HOME:-$HOME/.cargo}/registry/src" -maxdepth 2 -type d -name "crabka-schema-registry-$CRABKA_VERSION" | head -n 1)
  [[ -n $src ]] || {
    echo "crabka-schema-registry-$CRABKA_VERSION sources were not fetched"
    return 1
  }
  # The crate's own published lock file pins its (yanked) dependencies; --locked keeps to it.
  cargo install --path "$src" --locked --root "$work/root" --target-dir "$work/target"
  publish_binary "$work/root/bin/crabka-schema-registry" "$target"
}

install_chdb() {
  local venv
  venv=$(chdb_venv)
  [[ -x $venv/bin/python && -f $venv/.complete ]] && return 0
  mkdir -p "$cache_dir/logs"
  local log=$cache_dir/logs/install-chdb-core-$CHDB_VERSION.log
  say "installing chdb-core $CHDB_VERSION (the ClickHouse 26.9 engine; a 181 MB wheel; log: $log)"
  rm -rf "$venv"
  # shellcheck disable=SC2086 # the requirement list is split into words on purpose
  if ! { python3 -m venv "$venv" &&
    "$venv/bin/pip" install --disable-pip-version-check $PYTHON_REQUIREMENTS; } >"$log" 2>&1; then
    die "installing chdb-core failed; the last lines of $log say why. Check python3 -m venv and PyPI, then run 'stack.sh up' again"
  fi
  touch "$venv/.complete"
}

install_prometheus() {
  command -v prometheus >/dev/null && command -v promtool >/dev/null && return 0
  say "installing prometheus from Debian's packages"
  local sudo=
  [[ $(id -u) -eq 0 ]] || sudo=sudo
  mkdir -p "$cache_dir/logs"
  local log=$cache_dir/logs/install-prometheus.log
  if ! { $sudo apt-get update && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y --no-install-recommends prometheus; } >"$log" 2>&1; then
    die "installing prometheus with apt-get failed; the last lines of $log say why"
  fi
}

install_all() {
  # One installer at a time: a second 'up' waits here instead of building everything twice.
  mkdir -p "$cache_dir"
  exec 9>"$cache_dir/.install.lock"
  if ! flock -n 9; then
    say "another stack.sh is installing; waiting for it"
    flock 9
  fi
  install_prometheus
  install_chdb
  # The two Rust builds are slow; side by side their single-threaded phases (build scripts,
  # linking) overlap, which beats running them one after the other on 2 cores.
  install_registry &
  local registry_install=$!
  install_nisshi
  wait "$registry_install" || die "the schema registry install failed (see above)"
  exec 9>&-
}

# ---------------------------------------------------------------------------------------------
# processes

pid_of() {
  local file=$pid_dir/$1.pid
  [[ -f $file ]] || return 1
  local pid
  pid=$(cat "$file")
  # A pid file outlives a reboot: only trust it while the process is still the one we started.
  if [[ -d /proc/$pid ]] && tr '\0' ' ' <"/proc/$pid/cmdline" | grep -qF -- "$(cat "$pid_dir/$1.cmd")"; then
    echo "$pid"
    return 0
  fi
  return 1
}

port_taken() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

require_free_port() {
  local name=$1 port=$2 variable=$3
  if port_taken "$port"; then
    local holder
    holder=$(ss -ltnpH "sport = :$port" 2>/dev/null | grep -o '"[^"]*",pid=[0-9]*' | head -n 1 |
      sed 's/"\([^"]*\)",pid=/\1, pid /' || true)
    die "port $port for $name is taken by another process${holder:+ ($holder)}; stop it, or choose another port with $variable=PORT"
  fi
}

# start NAME COMMAND... : runs COMMAND in the background, its output in logs/NAME.log.
start_process() {
  local name=$1
  shift
  mkdir -p "$log_dir" "$pid_dir"
  setsid "$@" >>"$log_dir/$name.log" 2>&1 </dev/null &
  local pid=$!
  echo "$pid" >"$pid_dir/$name.pid"
  echo "$1" >"$pid_dir/$name.cmd"
}

# Alive and not a zombie. (pid_of's command-line check cannot be used right after start: until
# the forked shell has exec'd, /proc/PID/cmdline still shows bash.)
process_alive() {
  [[ -d /proc/$1 ]] && ! grep -q '^State:[[:space:]]*Z' "/proc/$1/status" 2>/dev/null
}

wait_healthy() {
  local name=$1 check=$2
  local deadline=$((SECONDS + health_deadline))
  local pid
  pid=$(cat "$pid_dir/$name.pid")
  while ((SECONDS < deadline)); do
    if ! process_alive "$pid"; then
      die "$name exited during start-up; the last lines of $log_dir/$name.log say why"
    fi
    if $check; then return 0; fi
    sleep 0.2
  done
  die "$name did not become healthy within ${health_deadline}s; see $log_dir/$name.log"
}

stop_process() {
  local name=$1 pid
  pid=$(pid_of "$name") || {
    rm -f "$pid_dir/$name.pid" "$pid_dir/$name.cmd"
    return 0
  }
  kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
  local deadline=$((SECONDS + 15))
  while [[ -d /proc/$pid ]] && ((SECONDS < deadline)); do sleep 0.1; done
  if [[ -d /proc/$pid ]]; then
    say "$name did not stop within 15 s of SIGTERM; sending SIGKILL"
    kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -f "$pid_dir/$name.pid" "$pid_dir/$name.cmd"
  say "stopped $name (pid $pid)"
}

kafka_healthy() { port_taken "$kafka_port" && grep -q 'ready in' "$log_dir/kafka.log"; }
registry_healthy() { curl -fsS "http://127.0.0.1:$registry_port/subjects" >/dev/null 2>&1; }
# A registration is a write through the broker: a registry that answers GETs but cannot write
# its schemas topic fails this. (A new subject each time: re-registering a known schema is
# answered from the registry's cache without a write.)
registry_writes() {
  curl -fsS -m 5 -X POST -H 'Content-Type: application/vnd.schemaregistry.v1+json' \
    --data '{"schema": "\"string\""}' \
    "http://127.0.0.1:$registry_port/subjects/_boomerang_stack_check_$(date +%s%N)-value/versions" >/dev/null 2>&1
}
clickhouse_healthy() { [[ $(curl -fsS "http://127.0.0.1:$clickhouse_port/ping" 2>/dev/null) == "Ok." ]]; }
prometheus_healthy() { curl -fsS "http://127.0.0.1:$prometheus_port/-/ready" >/dev/null 2>&1; }

start_kafka() {
  local storage=memory://nisshi/
  if [[ ${use_sqlite:-no} == yes ]]; then
    mkdir -p "$data_dir"
    # nisshi reads the URL's path relative to its working directory unless it starts with
    # two slashes: sqlite:///abs/path would open abs/path under the current directory.
    storage=sqlite:///$data_dir/nisshi.db
  fi
  if pid_of kafka >/dev/null; then return 0; fi
  require_free_port kafka "$kafka_port" BOOMERANG_KAFKA_PORT
  # The registry keeps its schemas in a topic on the broker: a new broker needs a new registry.
  stop_process registry
  : >"$log_dir/kafka.log"
  start_process kafka "$(nisshi_bin)" broker \
    --listener-url "tcp://127.0.0.1:$kafka_port" \
    --advertised-listener-url "tcp://127.0.0.1:$kafka_port" \
    --storage-engine "$storage" \
    --group-initial-rebalance-delay 0s
  wait_healthy kafka kafka_healthy
  say "kafka (nisshi $NISSHI_VERSION, $storage) on 127.0.0.1:$kafka_port"
}

start_registry() {
  if pid_of registry >/dev/null; then return 0; fi
  require_free_port registry "$registry_port" BOOMERANG_REGISTRY_PORT
  local attempt deadline
  for attempt in 1 2; do
    start_process registry "$(registry_bin)" \
      --bootstrap-servers "127.0.0.1:$kafka_port" \
      --listen-addr "127.0.0.1:$registry_port" \
      --schemas-topic-rf 1
    wait_healthy registry registry_healthy
    # Writes wait for the registry to be elected primary in its group, which waits for the
    # session of any instance that died without leaving to expire.
    deadline=$((SECONDS + 90))
    while ((SECONDS < deadline)); do
      if registry_writes; then
        say "schema registry (crabka $CRABKA_VERSION) on http://127.0.0.1:$registry_port"
        return 0
      fi
      sleep 1
    done
    say "schema registry answers but cannot register a schema (attempt $attempt); restarting it"
    stop_process registry
  done
  die "the schema registry cannot register schemas; see $log_dir/registry.log"
}

start_clickhouse() {
  if pid_of clickhouse >/dev/null; then return 0; fi
  require_free_port clickhouse "$clickhouse_port" BOOMERANG_CLICKHOUSE_PORT
  mkdir -p "$data_dir/clickhouse"
  start_process clickhouse "$(chdb_venv)/bin/python" "$repo_root/deploy/local/chfront/chfront.py" \
    --listen "127.0.0.1:$clickhouse_port" --data "$data_dir/clickhouse"
  wait_healthy clickhouse clickhouse_healthy
  say "clickhouse (chDB $CHDB_VERSION behind deploy/local/chfront) on http://127.0.0.1:$clickhouse_port"
}

# Prometheus scrapes every Boomerang binary that registers itself in targets/ (file-based
# service discovery): a binary started with BOOMERANG_PROMETHEUS_TARGETS_DIR set writes one
# JSON file there while it runs.
start_prometheus() {
  if pid_of prometheus >/dev/null; then return 0; fi
  require_free_port prometheus "$prometheus_port" BOOMERANG_PROMETHEUS_PORT
  local dir=$state_dir/prometheus
  mkdir -p "$dir/targets" "$dir/data"
  # A binary removes its target file when it exits; one that was killed cannot.
  local target pid
  for target in "$dir"/targets/*-*.json; do
    [[ -e $target ]] || continue
    pid=${target##*-}
    pid=${pid%.json}
    [[ $pid =~ ^[0-9]+$ ]] && ! process_alive "$pid" && rm -f "$target"
  done
  cat >"$dir/prometheus.yml" <<EOF
# Written by deploy/local/stack.sh; edits are lost at the next 'up'.
global:
  scrape_interval: 2s
  evaluation_interval: 2s
rule_files:
  - $repo_root/deploy/monitoring/alerts.yml
scrape_configs:
  - job_name: boomerang
    file_sd_configs:
      - files: ['$dir/targets/*.json']
        refresh_interval: 2s
EOF
  start_process prometheus "$(command -v prometheus)" \
    --config.file "$dir/prometheus.yml" \
    --storage.tsdb.path "$dir/data" \
    --web.listen-address "127.0.0.1:$prometheus_port"
  wait_healthy prometheus prometheus_healthy
  say "prometheus on http://127.0.0.1:$prometheus_port (targets: $dir/targets)"
}

write_env_file() {
  mkdir -p "$state_dir"
  cat >"$env_file.partial" <<EOF
# Written by deploy/local/stack.sh up: the local stack's endpoints, read by tests and binaries.
BOOMERANG_KAFKA_BROKERS=127.0.0.1:$kafka_port
BOOMERANG_SCHEMA_REGISTRY_URL=http://127.0.0.1:$registry_port
BOOMERANG_CLICKHOUSE_URL=http://127.0.0.1:$clickhouse_port
BOOMERANG_PROMETHEUS_URL=http://127.0.0.1:$prometheus_port
BOOMERANG_PROMETHEUS_TARGETS_DIR=$state_dir/prometheus/targets
EOF
  mv "$env_file.partial" "$env_file"
}

# Every port a part that is not running yet needs, checked before anything starts, so that a
# conflict never leaves half a stack behind.
check_ports() {
  pid_of kafka >/dev/null || require_free_port kafka "$kafka_port" BOOMERANG_KAFKA_PORT
  pid_of registry >/dev/null || require_free_port registry "$registry_port" BOOMERANG_REGISTRY_PORT
  pid_of clickhouse >/dev/null || require_free_port clickhouse "$clickhouse_port" BOOMERANG_CLICKHOUSE_PORT
  pid_of prometheus >/dev/null || require_free_port prometheus "$prometheus_port" BOOMERANG_PROMETHEUS_PORT
}

cmd_up() {
  local started=$SECONDS
  install_all
  mkdir -p "$log_dir" "$pid_dir"
  check_ports
  start_kafka
  # crabka's producer does not reconnect after the broker closes its connection for being idle
  # (Kafka's connections.max.idle.ms, 10 minutes): a registry left idle answers reads but
  # hangs on every registration. Restart one that cannot register; its schemas survive in the
  # broker's _schemas topic.
  if pid_of registry >/dev/null && ! registry_writes; then
    say "the schema registry cannot register schemas (idle connection to the broker closed?); restarting it"
    stop_process registry
  fi
  start_registry
  start_clickhouse
  start_prometheus
  write_env_file
  say "healthy in $((SECONDS - started)) s; endpoints in $env_file"
}

cmd_down() {
  local name
  for name in prometheus clickhouse registry kafka; do stop_process "$name"; done
}

cmd_status() {
  local name pid all_up=yes
  for name in kafka registry clickhouse prometheus; do
    if pid=$(pid_of "$name"); then
      printf '%-11s running (pid %s)\n' "$name" "$pid"
    else
      printf '%-11s stopped\n' "$name"
      all_up=no
    fi
  done
  [[ -f $env_file ]] && sed -n 's/^BOOMERANG_/  BOOMERANG_/p' "$env_file"
  [[ $all_up == yes ]]
}

main() {
  local command=${1:-}
  shift || true
  use_sqlite=no
  if [[ $command == stop ]]; then
    case ${1:-} in
      kafka | registry | clickhouse | prometheus) stop_process "$1" ;;
      *) die "usage: stack.sh stop kafka|registry|clickhouse|prometheus" ;;
    esac
    return 0
  fi
  local arg
  for arg in "$@"; do
    case $arg in
      --sqlite) use_sqlite=yes ;;
      *) die "unknown option $arg (try: up [--sqlite] | down | status | install | env | python | clean)" ;;
    esac
  done
  case $command in
    up) cmd_up ;;
    down) cmd_down ;;
    status) cmd_status ;;
    install) install_all ;;
    env) echo "$env_file" ;;
    python)
      install_chdb
      echo "$(chdb_venv)/bin/python"
      ;;
    clean)
      cmd_down
      rm -rf "$state_dir"
      ;;
    *) die "usage: stack.sh up [--sqlite] | down | stop PART | status | install | env | python | clean" ;;
  esac
}

main "$@"

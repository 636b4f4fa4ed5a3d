#!/usr/bin/env bash
# A three-node RabbitMQ cluster on this one machine, for tests/cluster.rs, from Debian's
# rabbitmq-server (installed by tests/run.sh). The nodes are c1@localhost, c2@localhost and
# c3@localhost: each with its own AMQP port (5681-5683), management API (15681-15683),
# Erlang distribution port (25681-25683), configuration, data and log directories (under
# $NAMEKO_CLUSTER_DIR, by default /var/lib/rabbitmq/nameko-cluster), all on 127.0.0.1 and
# sharing the rabbitmq user's Erlang cookie. The single broker the rest of the suite uses
# (rabbit@<host>, 5672) is left alone.
#
#   tests/cluster.sh up            start the three nodes, join them, enable their management API
#   tests/cluster.sh down          stop the nodes and delete their directories
#   tests/cluster.sh stop NODE     stop one node (c1, c2 or c3) gracefully
#   tests/cluster.sh kill NODE     kill -9 one node's Erlang VM
#   tests/cluster.sh start NODE    start one node again (it rejoins the cluster)
#   tests/cluster.sh status        the cluster's status, as c1 (or the first node up) sees it
#   tests/cluster.sh env           the variables tests/cluster.rs reads, as shell assignments
#
# Needs root, or passwordless sudo: the nodes run as the rabbitmq user. Every wait is bounded.
set -euo pipefail

NODES=(c1 c2 c3)
DIR=${NAMEKO_CLUSTER_DIR:-/var/lib/rabbitmq/nameko-cluster}
BIN=/usr/lib/rabbitmq/bin

say() { printf '== cluster: %s\n' "$*" >&2; }
die() { printf 'cluster: %s\n' "$*" >&2; exit 1; }

as_rabbitmq() {
  # In the rabbitmq user's home: the caller's directory may be one it cannot read.
  local cmd=(runuser -u rabbitmq -- env -C /var/lib/rabbitmq HOME=/var/lib/rabbitmq "$@")
  if [ "$(id -u)" = 0 ]; then "${cmd[@]}";
  elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then sudo -n "${cmd[@]}";
  else die "needs root or passwordless sudo (the nodes run as the rabbitmq user)"; fi
}

index() {
  case "$1" in
    c1|c1@localhost) echo 1 ;; c2|c2@localhost) echo 2 ;; c3|c3@localhost) echo 3 ;;
    *) die "no node '$1' (c1, c2 or c3)" ;;
  esac
}
amqp_port() { echo $((5680 + $(index "$1"))); }
api_port() { echo $((15680 + $(index "$1"))); }
dist_port() { echo $((25680 + $(index "$1"))); }

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# The environment one node runs (and is spoken to) with.
node_env() {
  local n=$1 d="$DIR/$1"
  echo RABBITMQ_NODENAME="$n@localhost" \
    RABBITMQ_NODE_IP_ADDRESS=127.0.0.1 \
    RABBITMQ_NODE_PORT="$(amqp_port "$n")" \
    RABBITMQ_DIST_PORT="$(dist_port "$n")" \
    RABBITMQ_CONF_ENV_FILE="$d/rabbitmq-env.conf" \
    RABBITMQ_CONFIG_FILE="$d/rabbitmq.conf" \
    RABBITMQ_ADVANCED_CONFIG_FILE="$d/advanced.config" \
    RABBITMQ_ENABLED_PLUGINS_FILE="$d/enabled_plugins" \
    RABBITMQ_MNESIA_BASE="$d/mnesia" \
    RABBITMQ_LOG_BASE="$d/log" \
    RABBITMQ_PID_FILE="$d/pid" \
    ERL_CRASH_DUMP="$d/erl_crash.dump"
}

ctl() {
  local n=$1; shift
  # shellcheck disable=SC2046
  as_rabbitmq $(node_env "$n") timeout 120 "$BIN/rabbitmqctl" -q -n "$n@localhost" "$@"
}

running() { ctl "$1" status >/dev/null 2>&1; }

configure() {
  local n=$1 d="$DIR/$1"
  as_rabbitmq mkdir -p "$d/mnesia" "$d/log"
  as_rabbitmq sh -c "cat > '$d/rabbitmq.conf'" <<EOF
# nameko-rs test cluster, node $n: loopback only
listeners.tcp.1 = 127.0.0.1:$(amqp_port "$n")
management.tcp.ip = 127.0.0.1
management.tcp.port = $(api_port "$n")
log.file.level = info
# The fault tests kill nodes: a node that comes back heals the cluster by itself.
cluster_partition_handling = autoheal
EOF
  as_rabbitmq sh -c "echo '[rabbitmq_management].' > '$d/enabled_plugins'; : > '$d/rabbitmq-env.conf'"
  as_rabbitmq sh -c "[ -f '$d/advanced.config' ] || echo '[].' > '$d/advanced.config'"
}

# What a node that would not start left behind: the end of its log, and of a crash dump.
explain() {
  local n=$1 d="$DIR/$1"
  printf 'cluster: %s@localhost did not start; the end of its log (%s/log):\n' "$n" "$d" >&2
  as_rabbitmq sh -c "tail -n 40 '$d/log/$n@localhost.log' 2>/dev/null" >&2 || true
  if as_rabbitmq test -f "$d/erl_crash.dump" 2>/dev/null; then
    printf 'cluster: its erl_crash.dump begins:\n' >&2
    as_rabbitmq head -n 5 "$d/erl_crash.dump" >&2 || true
  fi
  for p in "$(amqp_port "$n")" "$(api_port "$n")" "$(dist_port "$n")"; do
    ! port_open "$p" || printf 'cluster: port %s was already taken\n' "$p" >&2
  done
}

# One try at booting a node: false if it is not up and listening within the bounded waits.
boot() {
  local n=$1
  # shellcheck disable=SC2046
  as_rabbitmq $(node_env "$n") "$BIN/rabbitmq-server" -detached || return 1
  local ok=
  for _ in $(seq 1 60); do
    if ctl "$n" await_startup --timeout 60 >/dev/null 2>&1; then ok=1; break; fi
    sleep 1
  done
  [ -n "$ok" ] || return 1
  for _ in $(seq 1 60); do port_open "$(api_port "$n")" && break; sleep 1; done
  port_open "$(amqp_port "$n")" && port_open "$(api_port "$n")"
}

# Start a node. A node that does not come up is explained, killed, given a fresh data directory
# (it has nothing worth keeping if it never booted) and started once more.
start() {
  local n=$1
  if running "$n"; then return 0; fi
  [ -f "$DIR/$n/rabbitmq.conf" ] || configure "$n"
  say "starting $n@localhost (AMQP $(amqp_port "$n"), management $(api_port "$n"))"
  boot "$n" && return 0
  explain "$n"
  say "starting $n@localhost again, with a fresh data directory"
  ctl "$n" stop >/dev/null 2>&1 || true
  local pid; pid=$(as_rabbitmq cat "$DIR/$n/pid" 2>/dev/null || true)
  [ -z "$pid" ] || as_rabbitmq kill -9 "$pid" 2>/dev/null || true
  as_rabbitmq rm -rf "$DIR/$n/mnesia" "$DIR/$n/pid"
  as_rabbitmq mkdir -p "$DIR/$n/mnesia"
  sleep 2
  boot "$n" && return 0
  explain "$n"
  die "$n@localhost did not start twice: see $DIR/$n/log"
}

clustered() { ctl "$1" cluster_status --formatter json 2>/dev/null | grep -q "c1@localhost"; }

up() {
  command -v rabbitmq-server >/dev/null || die "rabbitmq-server is not installed"
  as_rabbitmq mkdir -p "$DIR"
  for n in "${NODES[@]}"; do start "$n"; done
  for n in c2 c3; do
    if ! ctl "$n" cluster_status --formatter json 2>/dev/null | grep -q '"running_nodes":\[[^]]*c1@localhost'; then
      say "joining $n@localhost to c1@localhost"
      local out
      out=$( { ctl "$n" stop_app && ctl "$n" reset && ctl "$n" join_cluster c1@localhost \
               && ctl "$n" start_app && ctl "$n" await_startup --timeout 60; } 2>&1 ) \
        || die "$n@localhost could not join c1@localhost: $out"
    fi
  done
  local members
  members=$(ctl c1 cluster_status --formatter json)
  for n in "${NODES[@]}"; do
    grep -q "\"running_nodes\":\[[^]]*$n@localhost" <<<"$members" \
      || die "$n@localhost is not running in the cluster: $members"
  done
  say "up: c1, c2 and c3 on 127.0.0.1:5681-5683 (management 15681-15683)"
}

pid_of() {
  local n=$1 pid
  pid=$(as_rabbitmq cat "$DIR/$n/pid" 2>/dev/null || true)
  [ -n "$pid" ] || pid=$(ctl "$n" eval 'os:getpid().' 2>/dev/null | tr -dc 0-9)
  echo "$pid"
}

kill9() {
  local n=$1 pid
  pid=$(pid_of "$n")
  [ -n "$pid" ] || die "$n@localhost is not running"
  say "kill -9 $n@localhost (pid $pid)"
  as_rabbitmq kill -9 "$pid" 2>/dev/null || true
  for _ in $(seq 1 50); do port_open "$(amqp_port "$n")" || break; sleep 0.1; done
  ! port_open "$(amqp_port "$n")" || die "$n@localhost still listens after kill -9"
  as_rabbitmq rm -f "$DIR/$n/pid"
}

stop() {
  local n=$1
  say "stopping $n@localhost"
  ctl "$n" stop >/dev/null 2>&1 || true
  for _ in $(seq 1 60); do port_open "$(amqp_port "$n")" || break; sleep 0.5; done
  if port_open "$(amqp_port "$n")"; then kill9 "$n"; fi
  as_rabbitmq rm -f "$DIR/$n/pid"
}

down() {
  for n in "${NODES[@]}"; do
    if running "$n" || [ -n "$(as_rabbitmq cat "$DIR/$n/pid" 2>/dev/null || true)" ]; then
      say "stopping $n@localhost"
      ctl "$n" stop >/dev/null 2>&1 || true
      local pid; pid=$(as_rabbitmq cat "$DIR/$n/pid" 2>/dev/null || true)
      [ -z "$pid" ] || as_rabbitmq kill -9 "$pid" 2>/dev/null || true
    fi
  done
  as_rabbitmq rm -rf "$DIR"
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  stop|kill|start)
    index "${2:?which node: c1, c2 or c3}" >/dev/null
    node=${2%@localhost}
    case "$1" in stop) stop "$node" ;; kill) kill9 "$node" ;; start) start "$node" ;; esac ;;
  status) for n in "${NODES[@]}"; do if running "$n"; then ctl "$n" cluster_status; exit 0; fi; done
          die "no node is running" ;;
  env)
    printf 'export NAMEKO_TEST_CLUSTER_AMQP="%s"\n' \
      "amqp://guest:guest@127.0.0.1:5681;amqp://guest:guest@127.0.0.1:5682;amqp://guest:guest@127.0.0.1:5683"
    printf 'export NAMEKO_TEST_CLUSTER_API="%s"\n' \
      "http://guest:guest@127.0.0.1:15681;http://guest:guest@127.0.0.1:15682;http://guest:guest@127.0.0.1:15683"
    printf 'export NAMEKO_TEST_CLUSTER_CTL="%s"\n' "$(cd "$(dirname "$0")" && pwd)/cluster.sh"
    ;;
  *) sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
esac

#!/usr/bin/env bash
# Runs the whole test suite: unit, macro (trybuild), embedded-broker, RabbitMQ and Python nameko
# interop tests. Brings up what they need:
#   - RabbitMQ: installs Debian's rabbitmq-server if missing (as root, or with passwordless sudo),
#     starts it if it is not running, enables its management API (tests use it to create an
#     isolated virtual host per test), adds a TLS listener on 5671 with a test certificate
#     authority it makes (restarting the broker once for it); the fault suite restarts this
#     broker (tests/faults.rs);
#   - Python nameko 2.14.1 in a virtualenv under target/, from tests/interop/requirements.txt;
#   - a three-node RabbitMQ cluster on this machine (tests/cluster.sh), for tests/cluster.rs,
#     taken down at the end;
#   - Debian's chromium, for the webapp's test in a headless browser.
# To use a RabbitMQ elsewhere, set NAMEKO_TEST_AMQP_URI and NAMEKO_TEST_RABBIT_API yourself.
# Extra arguments go to `cargo test` (e.g. tests/run.sh --test rpc).
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf '\n== %s\n' "$*" >&2; }

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@";
  elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then sudo "$@";
  else return 1; fi
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

if [ -z "${NAMEKO_TEST_AMQP_URI:-}" ]; then
  if ! command -v rabbitmq-server >/dev/null 2>&1; then
    say "Installing RabbitMQ (Debian's rabbitmq-server)"
    as_root apt-get update -qq && as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq rabbitmq-server >/dev/null || {
      echo "RabbitMQ is not installed and cannot be installed without root: run 'sudo apt-get install rabbitmq-server'" >&2
      exit 1
    }
  fi
  # A TLS listener on 5671 with a certificate authority made here, for the amqps:// tests
  # (test-only keys, readable by all, in /etc/rabbitmq/nameko-test-tls).
  tls_dir=/etc/rabbitmq/nameko-test-tls
  if ! command -v openssl >/dev/null 2>&1 || [ ! -s /etc/ssl/certs/ca-certificates.crt ]; then
    # openssl makes the test certificates; rustls also wants the system's authorities.
    say "Installing openssl and ca-certificates"
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openssl ca-certificates >/dev/null
  fi
  if [ ! -f "$tls_dir/client.key" ]; then
    say "Making a test certificate authority and certificates in $tls_dir"
    d=$(mktemp -d)
    openssl() {
      command openssl "$@" 2>>"$d/openssl.log" || {
        echo "openssl $1 failed:" >&2; cat "$d/openssl.log" >&2; exit 1
      }
    }
    openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=nameko-rs test CA" \
      -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
      -keyout "$d/ca.key" -out "$d/ca.pem"
    for who in server client; do
      if [ "$who" = server ]; then
        ext="subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth"
      else
        ext="extendedKeyUsage=clientAuth"
      fi
      printf "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\n$ext\n" > "$d/$who.ext"
      openssl req -newkey rsa:2048 -nodes -subj "/CN=nameko-rs test $who" \
        -keyout "$d/$who.key" -out "$d/$who.csr"
      openssl x509 -req -in "$d/$who.csr" -CA "$d/ca.pem" -CAkey "$d/ca.key" -CAcreateserial \
        -days 3650 -extfile "$d/$who.ext" -out "$d/$who.pem"
    done
    chmod 644 "$d"/*.pem "$d"/*.key
    as_root mkdir -p "$tls_dir"
    as_root cp "$d/ca.pem" "$d/server.pem" "$d/server.key" "$d/client.pem" "$d/client.key" "$tls_dir/"
    rm -rf "$d"
    unset -f openssl
  fi
  conf=/etc/rabbitmq/rabbitmq.conf
  if ! grep -qs "$tls_dir" "$conf"; then
    say "Adding a TLS listener (5671) to $conf"
    printf '%s\n' "# nameko-rs tests: amqps:// with client certificates" \
      "listeners.ssl.default = 5671" \
      "ssl_options.cacertfile = $tls_dir/ca.pem" \
      "ssl_options.certfile = $tls_dir/server.pem" \
      "ssl_options.keyfile = $tls_dir/server.key" \
      "ssl_options.verify = verify_peer" \
      "ssl_options.fail_if_no_peer_cert = true" | as_root tee -a "$conf" >/dev/null
    if as_root rabbitmqctl -q status >/dev/null 2>&1; then
      say "Restarting RabbitMQ for its TLS listener"
      as_root rabbitmqctl -q stop >/dev/null 2>&1 || true
      for _ in $(seq 1 30); do port_open 5672 || break; sleep 1; done
    fi
  fi
  if ! as_root rabbitmqctl -q status >/dev/null 2>&1; then
    say "Starting RabbitMQ"
    as_root rabbitmq-server -detached
    for _ in $(seq 1 60); do
      as_root rabbitmqctl -q await_startup --timeout 60 >/dev/null 2>&1 && break
      sleep 1
    done
    as_root rabbitmqctl -q await_startup --timeout 60 >/dev/null
  fi
  if ! port_open 15672; then
    say "Enabling the RabbitMQ management API"
    as_root rabbitmq-plugins -q enable rabbitmq_management >/dev/null
    for _ in $(seq 1 60); do port_open 15672 && break; sleep 1; done
  fi
  port_open 5672 || { echo "RabbitMQ is not listening on 5672" >&2; exit 1; }
  port_open 15672 || { echo "the RabbitMQ management API is not listening on 15672" >&2; exit 1; }
  for _ in $(seq 1 30); do port_open 5671 && break; sleep 1; done
  port_open 5671 || { echo "RabbitMQ's TLS listener is not listening on 5671" >&2; exit 1; }
  export NAMEKO_TEST_TLS_DIR="$tls_dir"
  export NAMEKO_TEST_AMQPS_PORT=5671
  # The fault suite restarts this local broker (tests/faults.rs, broker-restart).
  if [ "$(id -u)" = 0 ]; then
    NAMEKO_TEST_RABBITMQCTL=$(command -v rabbitmqctl)
  else
    mkdir -p target
    printf '#!/bin/sh\nexec sudo -n rabbitmqctl "$@"\n' > target/rabbitmqctl
    chmod +x target/rabbitmqctl
    NAMEKO_TEST_RABBITMQCTL="$PWD/target/rabbitmqctl"
  fi
  export NAMEKO_TEST_RABBITMQCTL
  export NAMEKO_TEST_AMQP_URI="amqp://guest:guest@127.0.0.1:5672"
  export NAMEKO_TEST_RABBIT_API="http://guest:guest@127.0.0.1:15672"
fi

# A three-node RabbitMQ cluster on this machine (tests/cluster.sh) for tests/cluster.rs, for the
# whole suite or a run that names the cluster test; taken down again at the end. To use a
# cluster elsewhere, set NAMEKO_TEST_CLUSTER_AMQP, NAMEKO_TEST_CLUSTER_API and
# NAMEKO_TEST_CLUSTER_CTL yourself (tests/cluster.sh env shows them).
cluster_started=
take_down_cluster() {
  if [ -n "$cluster_started" ]; then
    say "Taking the test cluster down (tests/cluster.sh down)"
    timeout 300 tests/cluster.sh down || true
  fi
}
if [ -z "${NAMEKO_TEST_CLUSTER_AMQP:-}" ] && { [ "$#" -eq 0 ] || [[ " $* " == *cluster* ]]; }; then
  if command -v rabbitmq-server >/dev/null 2>&1 && { [ "$(id -u)" = 0 ] || sudo -n true 2>/dev/null; }; then
    say "Starting a three-node RabbitMQ cluster (tests/cluster.sh up)"
    cluster_started=1
    trap 'take_down_cluster' EXIT
    timeout 900 tests/cluster.sh up
    eval "$(tests/cluster.sh env)"
  else
    say "Not starting the test cluster: it needs rabbitmq-server and root (tests/cluster.rs will say so)"
  fi
fi

# Headless Chromium for the webapp's browser test (tests/webapp.rs).
if [ -z "${NAMEKO_TEST_CHROMIUM:-}" ] && ! command -v chromium >/dev/null 2>&1; then
  say "Installing Chromium (Debian's chromium) for the browser test"
  as_root apt-get update -qq && as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null || {
    echo "Chromium is not installed and cannot be installed without root: run 'sudo apt-get install chromium'" >&2
    exit 1
  }
fi

venv=target/interop-venv
if [ -z "${NAMEKO_TEST_PYTHON:-}" ]; then
  if ! "$venv/bin/python" -c 'import nameko' >/dev/null 2>&1 \
     || ! cmp -s tests/interop/requirements.txt "$venv/requirements.txt"; then
    say "Installing Python nameko 2.14.1 into $venv"
    rm -rf "$venv"
    python3 -m venv "$venv" 2>/dev/null || {
      as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
      python3 -m venv "$venv"
    }
    "$venv/bin/pip" install -q --disable-pip-version-check -r tests/interop/requirements.txt
    cp tests/interop/requirements.txt "$venv/requirements.txt"
  fi
  export NAMEKO_TEST_PYTHON="$PWD/$venv/bin/python"
fi

# Every test that needs RabbitMQ or Python runs; none may skip.
export NAMEKO_TEST_REQUIRE_BROKER=1
say "cargo test --workspace $*"
log=$(mktemp)
trap 'rm -f "$log"; take_down_cluster' EXIT
status=0
cargo test --workspace "$@" 2>&1 | tee "$log" || status=$?
# The `opentelemetry` feature, on for a build of its own: the library's unit and doc tests
# with it, and the trace across Rust, Python and Rust services. Only for the whole suite.
if [ "$#" -eq 0 ]; then
  say "The opentelemetry feature: its unit and doc tests, and tests/traces.rs (with examples/gateway built with it)"
  cargo test -p nameko --features opentelemetry --lib 2>&1 | tee -a "$log" || status=$?
  cargo test -p nameko --features opentelemetry --doc 2>&1 | tee -a "$log" || status=$?
  cargo build --features opentelemetry --example gateway 2>&1 | tee -a "$log" || status=$?
  cargo test --features opentelemetry --test traces 2>&1 | tee -a "$log" || status=$?
fi
if [ "$status" -ne 0 ]; then
  # What failed, again at the end where a truncated log still shows it: each failed test's
  # panic, and each trybuild case that did not match with its expected and actual output.
  echo
  echo "failure details:"
  # (At most 200 lines, counted in awk: `head` would end the pipe early, which pipefail and
  # set -e would turn into this script's own failure.)
  sed 's/\x1b\[[0-9;]*m//g' "$log" | awk '
    /^test .*\.rs \[should (pass|fail to compile)\] \.\.\. (mismatch|error|ok)/ { show = ($NF != "ok") }
    /^---- .* ----$/ { show = 1 }
    /^(failures:|test result:|test ui \.\.\.)/ { show = 0 }
    /^scenario .*: FAILED/ || /^    LOST:/ { if (n++ < 200) print }
    show { if (n++ < 200) print }'

fi
# The README's `cargo expand --example greeter`, run as the README says (.ci/run installs
# cargo-expand), after the tests (it needs cargo's build lock): the expansion must show the
# generated service and client. Only for the whole suite.
if [ "$#" -eq 0 ]; then
  if command -v cargo-expand >/dev/null 2>&1; then
    say "cargo expand --example greeter"
    expanded=$(mktemp)
    if cargo expand --example greeter >"$expanded" 2>"$expanded.err" \
       && grep -qF 'impl ::nameko::__private::Service for GreeterService {' "$expanded" \
       && grep -qF 'const NAME: &'"'"'static str = "greeter_service";' "$expanded" \
       && grep -qF 'pub struct GreeterServiceClient {' "$expanded" \
       && grep -qF 'pub async fn greet(' "$expanded"; then
      echo "cargo expand: ok, $(wc -l <"$expanded") lines showing GreeterService's Service impl and GreeterServiceClient"
    else
      echo "cargo expand --example greeter did not show the generated code:" >&2
      tail -n 20 "$expanded.err" "$expanded" >&2
      status=1
    fi
    rm -f "$expanded" "$expanded.err"
  elif [ "${CI:-}" = true ]; then
    echo "cargo-expand is not installed (.ci/run installs it): the README's cargo expand command is unchecked" >&2
    status=1
  else
    say "Not checking the README's cargo expand command: cargo-expand is not installed (cargo install cargo-expand)"
  fi
fi
# One closing line for the whole run (cargo prints one per test binary).
sed 's/\x1b\[[0-9;]*m//g' "$log" | awk '/^test result:/ { p += $4; f += $6; i += $8 }
  END { printf "\nall test binaries: %d passed, %d failed, %d ignored\n%d passed, %d failed\n", p, f, i, p, f }'
exit "$status"

#!/usr/bin/env bash
# Provision a Debian 12 machine with the whole werkbund stack: RabbitMQ with the management plugin
# and a TLS listener, PostgreSQL with the werkbund role and database, werkbund (notebooks, dashboard,
# postgres extras) and JupyterLab in /opt/werkbund/venv, and the cloud platform, the dashboard and
# Jupyter as services. The Vagrantfile runs it in the VM; .ci/run runs it on the CI machine.
#
# Idempotent: a second run changes nothing that is already right (passwords, keys and certificates
# are made once and kept; werkbund is reinstalled only when its source changed). It never stops the
# running broker where there is no systemd: the TLS listener is then added to the running node.
# Runs as root. docs/operations.md says what it sets up and how to run it in production.
#
#   sudo bash scripts/provision.sh          # the VM
#   bash scripts/provision.sh --ci          # CI: the same, and services started without systemd stop at the end
#
# Environment (defaults in brackets): WERKBUND_PREFIX [/opt/werkbund], WERKBUND_ETC [/etc/werkbund],
# WERKBUND_TLS_NAMES (more DNS names or IP addresses for the server certificate, space-separated),
# WERKBUND_NOTEBOOK_USER (who runs Jupyter [vagrant if that account exists, else werkbund]),
# WERKBUND_PYTHON [/usr/bin/python3, Debian's], AMQPS_PORT [5671], BLOB_PORT [8471], DASHBOARD_PORT [8050],
# JUPYTER_PORT [8888].
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd /  # commands run as other accounts (postgres, werkbund) need not enter the caller's folder
PREFIX=${WERKBUND_PREFIX:-/opt/werkbund}
ETC=${WERKBUND_ETC:-/etc/werkbund}
STATE=/var/lib/werkbund
LOGS=/var/log/werkbund
RUN=/run/werkbund
AMQPS_PORT=${AMQPS_PORT:-5671}
BLOB_PORT=${BLOB_PORT:-8471}
DASHBOARD_PORT=${DASHBOARD_PORT:-8050}
JUPYTER_PORT=${JUPYTER_PORT:-8888}
PYTHON=${WERKBUND_PYTHON:-/usr/bin/python3}
CI_MODE=0

for arg in "$@"; do
  case "$arg" in
    --ci) CI_MODE=1 ;;
    -h|--help) sed -n '2,19p' "$REPO/scripts/provision.sh"; exit 0 ;;
    *) echo "provision: unknown option $arg (use --ci or --help)" >&2; exit 2 ;;
  esac
done

step() { echo "== provision: $*"; }
die() { echo "provision: error: $*" >&2; exit 1; }
have_systemd() { [ -d /run/systemd/system ]; }
port_open() { (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; }
wait_for() {  # wait_for SECONDS WHAT COMMAND...
  local seconds=$1 what=$2; shift 2
  for _ in $(seq 1 "$seconds"); do "$@" >/dev/null 2>&1 && return 0; sleep 1; done
  die "$what did not come up within ${seconds} s"
}

[ "$(id -u)" -eq 0 ] || die "run as root (sudo bash scripts/provision.sh)"
if ! grep -q '^VERSION_CODENAME=bookworm' /etc/os-release 2>/dev/null; then
  echo "provision: warning: made for Debian 12 (bookworm); this is $(. /etc/os-release; echo "${PRETTY_NAME:-unknown}")" >&2
fi

# ------------------------------------------------------------------ packages
PACKAGES=(rabbitmq-server postgresql python3 python3-venv python3-dev build-essential openssl curl ca-certificates)
missing=()
for package in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
done
if [ ${#missing[@]} -gt 0 ]; then
  step "installing ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
else
  step "Debian packages present"
fi

# ------------------------------------------------------------------ accounts and secrets
if ! getent passwd werkbund >/dev/null; then
  step "creating the system account werkbund"
  useradd --system --home-dir "$STATE" --create-home --shell /usr/sbin/nologin werkbund
fi
NOTEBOOK_USER=${WERKBUND_NOTEBOOK_USER:-$(getent passwd vagrant >/dev/null && echo vagrant || echo werkbund)}
install -d -m 0755 "$ETC" "$PREFIX" "$PREFIX/bin"
install -d -m 0750 -o werkbund -g werkbund "$STATE" "$STATE/blobs" "$LOGS" "$RUN"

SECRETS=$ETC/secrets.env
if [ ! -f "$SECRETS" ]; then
  step "making passwords ($SECRETS)"
  umask 077
  {
    echo "BROKER_PASSWORD=$(openssl rand -hex 24)"
    echo "DB_PASSWORD=$(openssl rand -hex 24)"
    echo "JUPYTER_TOKEN=$(openssl rand -hex 24)"
    echo "CHECK_PASSWORD=$(openssl rand -hex 24)"
  } >"$SECRETS"
  umask 022
fi
chmod 0600 "$SECRETS"
# shellcheck source=/dev/null
. "$SECRETS"

# ------------------------------------------------------------------ TLS
TLS=$ETC/tls
install -d -m 0755 "$TLS"
if [ ! -f "$TLS/ca.pem" ] || [ ! -f "$TLS/ca-key.pem" ]; then
  step "making the CA ($TLS/ca.pem)"
  openssl req -x509 -new -nodes -newkey ec -pkeyopt ec_paramgen_curve:P-256 -days 3650 \
    -subj "/CN=werkbund CA $(hostname)" -addext "basicConstraints=critical,CA:TRUE,pathlen:0" \
    -addext "keyUsage=critical,keyCertSign,cRLSign" -keyout "$TLS/ca-key.pem" -out "$TLS/ca.pem" 2>/dev/null
  chmod 0600 "$TLS/ca-key.pem"
  rm -f "$TLS/server.pem"
fi
names="DNS:localhost,DNS:$(hostname),IP:127.0.0.1"
[ "$(hostname -f 2>/dev/null || hostname)" != "$(hostname)" ] && names="$names,DNS:$(hostname -f)"
for extra in ${WERKBUND_TLS_NAMES:-}; do
  if [[ "$extra" =~ ^[0-9.]+$|: ]]; then names="$names,IP:$extra"; else names="$names,DNS:$extra"; fi
done
if [ ! -f "$TLS/server.pem" ] || [ "$(cat "$TLS/server.names" 2>/dev/null)" != "$names" ] \
   || ! openssl x509 -checkend 2592000 -noout -in "$TLS/server.pem" >/dev/null; then
  step "making the server certificate for $names"
  openssl req -new -nodes -newkey ec -pkeyopt ec_paramgen_curve:P-256 -subj "/CN=localhost" \
    -keyout "$TLS/server-key.pem" -out "$TLS/server.csr" 2>/dev/null
  printf 'subjectAltName=%s\nbasicConstraints=critical,CA:FALSE\nextendedKeyUsage=serverAuth\n' "$names" >"$TLS/server.ext"
  openssl x509 -req -in "$TLS/server.csr" -CA "$TLS/ca.pem" -CAkey "$TLS/ca-key.pem" -CAcreateserial \
    -days 825 -sha256 -extfile "$TLS/server.ext" -out "$TLS/server.pem" 2>/dev/null
  echo "$names" >"$TLS/server.names"
  rm -f "$TLS/server.csr"
fi
chown root:werkbund "$TLS/server-key.pem" && chmod 0640 "$TLS/server-key.pem"
# the broker reads its own copy (its account need not be in the werkbund group)
install -d -m 0750 -o rabbitmq -g rabbitmq /etc/rabbitmq/werkbund-tls
for file in ca.pem server.pem server-key.pem; do
  install -m 0400 -o rabbitmq -g rabbitmq "$TLS/$file" "/etc/rabbitmq/werkbund-tls/$file"
done

# ------------------------------------------------------------------ RabbitMQ
step "RabbitMQ: running, management plugin, TLS listener on $AMQPS_PORT"
install -d -m 0755 /etc/rabbitmq/conf.d
cat >/etc/rabbitmq/conf.d/50-werkbund.conf <<EOF
# written by werkbund's scripts/provision.sh: AMQP over TLS on $AMQPS_PORT
listeners.ssl.default = $AMQPS_PORT
ssl_options.cacertfile = /etc/rabbitmq/werkbund-tls/ca.pem
ssl_options.certfile = /etc/rabbitmq/werkbund-tls/server.pem
ssl_options.keyfile = /etc/rabbitmq/werkbund-tls/server-key.pem
ssl_options.verify = verify_none
ssl_options.fail_if_no_peer_cert = false
ssl_options.versions.1 = tlsv1.3
ssl_options.versions.2 = tlsv1.2
EOF
if have_systemd; then
  systemctl enable --now rabbitmq-server >/dev/null
elif ! rabbitmqctl -q status >/dev/null 2>&1; then
  rabbitmq-server -detached >/dev/null 2>&1 || true
fi
wait_for 120 "RabbitMQ" rabbitmqctl -q await_startup
rabbitmq-plugins -q enable rabbitmq_management >/dev/null
wait_for 60 "the RabbitMQ management API" curl -sf -o /dev/null http://127.0.0.1:15672/
if ! port_open 127.0.0.1 "$AMQPS_PORT"; then
  if have_systemd; then  # the configuration file takes effect at a restart; users and queues stay
    systemctl restart rabbitmq-server
    wait_for 120 "RabbitMQ" rabbitmqctl -q await_startup
  else  # no service manager here: add the listener to the running node (the file holds it for its next start)
    rabbitmqctl -q eval "
      application:set_env(rabbit, ssl_options, [{cacertfile, \"/etc/rabbitmq/werkbund-tls/ca.pem\"},
          {certfile, \"/etc/rabbitmq/werkbund-tls/server.pem\"}, {keyfile, \"/etc/rabbitmq/werkbund-tls/server-key.pem\"},
          {verify, verify_none}, {fail_if_no_peer_cert, false}, {versions, ['tlsv1.3', 'tlsv1.2']}]),
      rabbit_networking:start_ssl_listener($AMQPS_PORT, rabbit_networking:ensure_ssl(), 10, 1)." >/dev/null
  fi
fi
wait_for 30 "the TLS listener on $AMQPS_PORT" port_open 127.0.0.1 "$AMQPS_PORT"
openssl s_client -connect "127.0.0.1:$AMQPS_PORT" -servername localhost -verify_hostname localhost \
  -CAfile "$TLS/ca.pem" -verify_return_error -brief </dev/null >/dev/null 2>&1 \
  || die "the broker's TLS listener on $AMQPS_PORT does not present a certificate that $TLS/ca.pem verifies"
if rabbitmqctl -q list_users | awk '{print $1}' | grep -qx werkbund; then
  rabbitmqctl -q change_password werkbund "$BROKER_PASSWORD" >/dev/null
else
  rabbitmqctl -q add_user werkbund "$BROKER_PASSWORD" >/dev/null
fi
rabbitmqctl -q set_user_tags werkbund administrator >/dev/null
rabbitmqctl -q list_vhosts | grep -qx werkbund || rabbitmqctl -q add_vhost werkbund >/dev/null
rabbitmqctl -q set_permissions -p werkbund werkbund '.*' '.*' '.*' >/dev/null

# ------------------------------------------------------------------ PostgreSQL
step "PostgreSQL: running, role and database werkbund"
if have_systemd; then
  systemctl enable --now postgresql >/dev/null
elif ! pg_isready -q -h 127.0.0.1; then
  pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | sort -V | tail -n1)" main start
fi
wait_for 60 "PostgreSQL" pg_isready -q -h 127.0.0.1
psql_admin() { runuser -u postgres -- psql -X -q -v ON_ERROR_STOP=1 -tA "$@"; }
if [ "$(psql_admin -c "SELECT 1 FROM pg_roles WHERE rolname = 'werkbund'")" != 1 ]; then
  psql_admin -c "CREATE ROLE werkbund LOGIN"
fi
psql_admin -c "ALTER ROLE werkbund LOGIN PASSWORD '$DB_PASSWORD'"
if [ "$(psql_admin -c "SELECT 1 FROM pg_database WHERE datname = 'werkbund'")" != 1 ]; then
  psql_admin -c "CREATE DATABASE werkbund OWNER werkbund"
fi

# ------------------------------------------------------------------ werkbund and Jupyter
VENV=$PREFIX/venv
SRC=$PREFIX/src
# what goes into the installation: the source without tests, docs, benchmarks and local environments
SOURCE_EXCLUDES=(--exclude=./.venv --exclude=./.venv-* --exclude=./.git --exclude='*.egg-info' --exclude=./build
                 --exclude=./tests --exclude=./docs --exclude=./bench --exclude=__pycache__ --exclude=.pytest_cache)
digest=$(tar -C "$REPO" "${SOURCE_EXCLUDES[@]}" --sort=name --mtime=@0 --owner=0 --group=0 -cf - . | sha256sum | cut -c1-64)
if [ ! -x "$VENV/bin/werkbund" ] || [ ! -x "$VENV/bin/jupyter-lab" ] || [ "$(cat "$PREFIX/.installed" 2>/dev/null)" != "$digest" ] \
   || ! grep -qx "home = $(dirname "$PYTHON")" "$VENV/pyvenv.cfg"; then
  step "installing werkbund[notebooks,dashboard,postgres] and JupyterLab into $VENV (a few minutes the first time)"
  # Debian's Python: the services' accounts must be able to run it (not a python3 under root's home)
  grep -qx "home = $(dirname "$PYTHON")" "$VENV/pyvenv.cfg" 2>/dev/null || rm -rf "$VENV"
  [ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
  rm -rf "$SRC" && install -d "$SRC"
  tar -C "$REPO" "${SOURCE_EXCLUDES[@]}" -cf - . | tar -C "$SRC" -xf -
  "$VENV/bin/python" -m pip install --quiet --upgrade pip
  "$VENV/bin/python" -m pip install --quiet "$SRC[notebooks,dashboard,postgres]" "jupyterlab>=4"
  echo "$digest" >"$PREFIX/.installed"
else
  step "werkbund in $VENV is up to date"
fi
install -d -m 0755 -o "$NOTEBOOK_USER" "$STATE/notebooks"
cp -rn "$REPO/notebooks/." "$STATE/notebooks/" 2>/dev/null || true
chown -R "$NOTEBOOK_USER" "$STATE/notebooks"

# ------------------------------------------------------------------ services
step "services: werkbund-platform, werkbund-dashboard, werkbund-jupyter"
umask 027
cat >"$ETC/platform.env" <<EOF
# written by scripts/provision.sh; read by the werkbund services (docs/operations.md)
WERKBUND_HOME=$STATE
WERKBUND_BROKER=amqps://werkbund:$BROKER_PASSWORD@localhost:$AMQPS_PORT/werkbund
WERKBUND_BROKER_CA=$TLS/ca.pem
WERKBUND_BROKER_MANAGEMENT=http://werkbund:$BROKER_PASSWORD@127.0.0.1:15672
WERKBUND_DB=postgresql+psycopg://werkbund:$DB_PASSWORD@127.0.0.1/werkbund
WERKBUND_BLOB_PORT=$BLOB_PORT
WERKBUND_BLOB_URL=https://localhost:$BLOB_PORT
WERKBUND_BLOB_DIR=$STATE/blobs
JUPYTER_TOKEN=$JUPYTER_TOKEN
EOF
umask 022
chown root:werkbund "$ETC/platform.env"
getent group werkbund | grep -qw "$NOTEBOOK_USER" || [ "$NOTEBOOK_USER" = werkbund ] || usermod -aG werkbund "$NOTEBOOK_USER"
cat >"$ETC/client.json" <<EOF
{"platform": "cloud", "url": "amqps://localhost:$AMQPS_PORT/werkbund", "ca_certificate": "$TLS/ca.pem"}
EOF

write_launcher() {  # write_launcher NAME COMMAND...: a script that reads platform.env and runs COMMAND
  local name=$1; shift
  # HOME as systemd sets it for User=: start-stop-daemon keeps the caller's
  printf '#!/bin/sh\n# written by scripts/provision.sh\nHOME=$(getent passwd "$(id -un)" | cut -d: -f6)\nset -a\n. %s\nset +a\nexec %s\n' \
    "$ETC/platform.env" "$*" >"$PREFIX/bin/$name"
  chmod 0755 "$PREFIX/bin/$name"
}
write_launcher werkbund-platform "$VENV/bin/werkbund platform serve --blob-host 0.0.0.0 --blob-tls-cert $TLS/server.pem --blob-tls-key $TLS/server-key.pem"
write_launcher werkbund-dashboard "$VENV/bin/werkbund dashboard --credentials $ETC/client.json --host 0.0.0.0 --port $DASHBOARD_PORT --tls-cert $TLS/server.pem --tls-key $TLS/server-key.pem"
write_launcher werkbund-jupyter "$VENV/bin/jupyter-lab --no-browser --ip 0.0.0.0 --port $JUPYTER_PORT --notebook-dir $STATE/notebooks --certfile $TLS/server.pem --keyfile $TLS/server-key.pem --IdentityProvider.token=\$JUPYTER_TOKEN"

SERVICES=(werkbund-platform werkbund-dashboard werkbund-jupyter)
declare -A SERVICE_USER=([werkbund-platform]=werkbund [werkbund-dashboard]=werkbund [werkbund-jupyter]=$NOTEBOOK_USER)
declare -A SERVICE_AFTER=([werkbund-platform]="rabbitmq-server.service postgresql.service"
                          [werkbund-dashboard]=werkbund-platform.service [werkbund-jupyter]=network.target)
for service in "${SERVICES[@]}"; do
  cat >"/etc/systemd/system/$service.service" <<EOF
# written by werkbund's scripts/provision.sh
[Unit]
Description=werkbund: $service
After=network-online.target ${SERVICE_AFTER[$service]}
Wants=${SERVICE_AFTER[$service]}

[Service]
User=${SERVICE_USER[$service]}
Group=werkbund
WorkingDirectory=$STATE
ExecStart=$PREFIX/bin/$service
Restart=on-failure
RestartSec=5
NoNewPrivileges=true

[Install]
WantedBy=multi-user.target
EOF
done

STARTED=()
if have_systemd; then
  systemctl daemon-reload
  for service in "${SERVICES[@]}"; do systemctl enable --quiet "$service"; systemctl restart "$service"; done
else
  echo "provision: no systemd here: the units are installed in /etc/systemd/system, and the services start" \
       "with start-stop-daemon (pid files in $RUN, logs in $LOGS)"
  for service in "${SERVICES[@]}"; do
    pidfile=$RUN/$service.pid
    if start-stop-daemon --status --pidfile "$pidfile" >/dev/null 2>&1; then
      start-stop-daemon --stop --quiet --retry TERM/20/KILL/5 --pidfile "$pidfile" --remove-pidfile || true
    fi
    start-stop-daemon --start --background --make-pidfile --pidfile "$pidfile" --remove-pidfile \
      --chuid "${SERVICE_USER[$service]}:werkbund" --chdir "$STATE" --output "$LOGS/$service.log" \
      --exec "$PREFIX/bin/$service"
    STARTED+=("$service")
  done
fi
stop_started() {
  for service in "${STARTED[@]}"; do
    start-stop-daemon --stop --quiet --retry TERM/20/KILL/5 --pidfile "$RUN/$service.pid" --remove-pidfile || true
  done
}
[ "$CI_MODE" = 1 ] && trap stop_started EXIT

# ------------------------------------------------------------------ the check
step "checking the stack as the user provision-check"
wait_for 120 "the blob store of werkbund-platform on $BLOB_PORT" port_open 127.0.0.1 "$BLOB_PORT"
CHECK_HOME=$STATE/provision-check
install -d -m 0700 "$CHECK_HOME"
umask 077
cat >"$CHECK_HOME/credentials.json" <<EOF
{"platform": "cloud", "url": "amqps://localhost:$AMQPS_PORT/werkbund", "ca_certificate": "$TLS/ca.pem",
 "user": "provision-check", "password": "$CHECK_PASSWORD", "org": "werkbund-provisioning"}
EOF
umask 022
printf '{"algorithm": "statistics", "quorum": 1, "description": "made by scripts/provision.sh to check access"}\n' \
  >"$CHECK_HOME/task.json"
as_check() { WERKBUND_HOME=$CHECK_HOME WERKBUND_CREDENTIALS=$CHECK_HOME/credentials.json "$VENV/bin/werkbund" "$@"; }
register_or_login() { as_check register >/dev/null 2>&1 || as_check login; }  # login: registered before
wait_for 60 "registration with the platform" register_or_login
as_check list --json 2>/dev/null | grep -q '"provision-check"' \
  || as_check create --task provision-check --definition "$CHECK_HOME/task.json" >/dev/null
as_check check || die "werkbund check failed (above); logs: $LOGS or journalctl -u werkbund-platform"
wait_for 60 "the dashboard on $DASHBOARD_PORT" curl -sf --cacert "$TLS/ca.pem" -o /dev/null "https://localhost:$DASHBOARD_PORT/login"
wait_for 60 "Jupyter on $JUPYTER_PORT" curl -sf --cacert "$TLS/ca.pem" -o /dev/null "https://localhost:$JUPYTER_PORT/api"
step "done: broker amqps://localhost:$AMQPS_PORT/werkbund (CA $TLS/ca.pem), management http://localhost:15672," \
     "blob store https://localhost:$BLOB_PORT, dashboard https://localhost:$DASHBOARD_PORT," \
     "Jupyter https://localhost:$JUPYTER_PORT (token in $SECRETS); client settings $ETC/client.json"

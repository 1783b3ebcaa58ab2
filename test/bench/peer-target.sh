#!/usr/bin/env bash
# peer-target.sh runs vitalproxy as an endpoint of the shared pgbench
# comparison script (peer-bench.sh --target/--target-cmd), from the
# repository root:
#
#   peer-bench.sh \
#     --target vitalproxy=127.0.0.1:6543,password=PW  --target-cmd 'test/bench/peer-target.sh 6543 session PW' \
#     --target vitalproxy-tx=127.0.0.1:6544,password=PW --target-cmd 'test/bench/peer-target.sh 6544 transaction PW'
#
# It builds the proxy, migrates the script's cluster (as its superuser, over
# the Unix socket), syncs the tenant roles, grants the tenant groups what
# pgbench needs (SELECT; column-level UPDATE and INSERT into the history for
# tpcb: the proxy's start-up audit refuses table-level UPDATE or DELETE for
# tenants) and serves the proxy user "bench" (password PW) as tenant
# digital-health-startup: pgbench's queries run as that tenant's own
# non-owner role, never as the tables' owner. Several targets may start at
# once: set-up steps take turns on a lock file.
set -Eeuo pipefail

port=${1:?usage: peer-target.sh PORT [session|transaction] [PASSWORD]}
mode=${2:-session}
password=${3:-$PGPASSWORD}
: "${BENCH_WORKDIR:?run me from peer-bench.sh --target-cmd}"

work="$BENCH_WORKDIR/vitalproxy-$mode-$port"
mkdir -p "$work"
bin="$work/vitalproxy"
go build -o "$bin" ./cmd/vitalproxy

admin="postgres://$BENCH_ADMIN_USER@/$PGDATABASE?host=$BENCH_ADMIN_HOST&port=$BENCH_ADMIN_PORT&sslmode=disable"
# Every target of one run derives the same tenant role passwords.
secret=$(printf '%s' "$BENCH_SCRAM_SECRET" | sha256sum | cut -c1-64 | base64 -w0)
verifier=$(printf '%s' "$password" | "$bin" passwd)
tx_pool=${TX_POOL:-20}

cat >"$work/vitalproxy.yaml" <<YAML
listen: 127.0.0.1:$port
listen_socket_dir: ""
database_url: "$admin"
upstream:
  url: "postgres://127.0.0.1:$PGPORT/$PGDATABASE?sslmode=disable"
  admin_url: "$admin"
role_secret: "$secret"
metrics: {listen: ""}
log: {level: warn}
pool:
  mode: $mode
  max_server_conns: 120
  max_server_conns_per_tenant: $([ "$mode" = transaction ] && echo "$tx_pool" || echo 0)
users:
  - {name: bench, password: "$verifier", tenant: digital-health-startup}
YAML

(
  flock 9
  "$bin" migrate up --config "$work/vitalproxy.yaml"
  psql -X -q -v ON_ERROR_STOP=1 -h "$BENCH_ADMIN_HOST" -p "$BENCH_ADMIN_PORT" -U "$BENCH_ADMIN_USER" -d "$PGDATABASE" \
    -c "GRANT SELECT ON pgbench_accounts, pgbench_branches, pgbench_tellers, pgbench_history TO vital_tenant" \
    -c "GRANT UPDATE (abalance) ON pgbench_accounts TO vital_tenant_writer" \
    -c "GRANT UPDATE (bbalance) ON pgbench_branches TO vital_tenant_writer" \
    -c "GRANT UPDATE (tbalance) ON pgbench_tellers TO vital_tenant_writer" \
    -c "GRANT INSERT ON pgbench_history TO vital_tenant_writer"
) 9>"$BENCH_WORKDIR/vitalproxy-setup.lock"

exec "$bin" serve --config "$work/vitalproxy.yaml"

#!/usr/bin/env bash
# A point-in-time recovery in a pod of the cluster's image (deploy/postgres/Dockerfile): the
# entrypoint of a Kubernetes point-in-time drill's scratch pod (KubernetesPlatform.recovery_pod),
# and the first boot of a cluster `pg-ops recover` makes on Kubernetes: member.sh runs it in the
# new cluster's first pod, on its own data volume, with PGOPS_RECOVERY_THEN=stop (below).
#
#   1. fetch pg_ops's base backup (one pg_basebackup tar, zstd) from the S3 store and extract it
#      into PGDATA, streamed (barman-cloud's venv has boto3 and zstandard: no copy of the tar);
#   2. start postgres on it with pg_ops's configuration (recovery.signal, restore_command =
#      barman-cloud-wal-restore, recovery_target_time, promote at the target; no hot standby);
#   3. once promoted, set the superuser's password from the credentials store (the restored
#      data holds the one of the target's time; a verifier, never the password) over the local
#      socket, so pg_ops can log in; then wait on postgres (a drill), or with
#      PGOPS_RECOVERY_THEN=stop shut it down cleanly and exit 0: the member script then starts
#      the promoted data as the cluster's primary with the cluster's own configuration.
# Whatever fails first (the fetch, the replay: "recovery ended before the target…") is written to
# the termination log, so pg_ops reads the reason in the pod's status without reading its logs.
#
# Inputs (env): PGDATA; PGOPS_RECOVERY_DIR (the Secret's files: postgresql.conf, pg_hba.conf,
# superuser.sql, and one file per variable below that the env does not set: PGOPS_S3_BUCKET,
# PGOPS_S3_KEY, PGOPS_S3_ENDPOINT (may be empty), PGOPS_S3_REGION, AWS_ACCESS_KEY_ID /
# AWS_SECRET_ACCESS_KEY (may be absent: the default chain));
# optional PGOPS_BIN (PostgreSQL's bin folder, default from PATH), PGOPS_PYTHON (barman-cloud's
# python, default /opt/barman/bin/python3), PGOPS_PORT (5432), PGOPS_LISTEN (*),
# PGOPS_TERMINATION_LOG (/dev/termination-log), PGOPS_RECOVERY_THEN (wait | stop). The local socket, the one way in without a
# password (pg_hba: `local all postgres trust`), is in a private folder of the pod's /tmp.
set -uo pipefail

DATA=${PGDATA:?PGDATA is required}
INPUT=${PGOPS_RECOVERY_DIR:?PGOPS_RECOVERY_DIR is required}
if [ -n "${PGOPS_BIN:-}" ]; then BIN="$PGOPS_BIN/"; else BIN=""; fi
PYTHON=${PGOPS_PYTHON:-/opt/barman/bin/python3}
PORT=${PGOPS_PORT:-5432}
LISTEN=${PGOPS_LISTEN-*}   # empty: the local socket only
TERMINATION_LOG=${PGOPS_TERMINATION_LOG:-/dev/termination-log}
THEN=${PGOPS_RECOVERY_THEN:-wait}
RUN_DIR=$(dirname "$DATA")/pg-ops-recovery
LOG=$RUN_DIR/postgres.log

fail() {
    echo "recover_pod: $*" >&2
    printf '%s\n' "$*" > "$TERMINATION_LOG" 2>/dev/null
    exit 1
}

# The store's coordinates and keys: the env's, else the Secret's file of that name (read here,
# never echoed; the keys reach barman-cloud-wal-restore through postgres's environment).
for var in PGOPS_S3_BUCKET PGOPS_S3_KEY PGOPS_S3_ENDPOINT PGOPS_S3_REGION AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY; do
    if [ -z "${!var+set}" ] && [ -f "$INPUT/$var" ]; then
        export "$var=$(cat "$INPUT/$var")"
    fi
done
[ -n "${PGOPS_S3_BUCKET:-}" ] && [ -n "${PGOPS_S3_KEY:-}" ] || fail "PGOPS_S3_BUCKET and PGOPS_S3_KEY are required"

mkdir -p "$RUN_DIR" "$DATA" || fail "cannot create $DATA"
SOCKET_DIR=$(mktemp -d /tmp/pg-ops-recovery.XXXXXX) || fail "cannot create a socket folder in /tmp"
chmod 700 "$DATA"
[ -z "$(ls -A "$DATA")" ] || fail "data dir $DATA is not empty; refusing to restore into it"
for file in postgresql.conf pg_hba.conf superuser.sql; do
    cp "$INPUT/$file" "$RUN_DIR/$file" || fail "cannot read $INPUT/$file"
done
chmod 600 "$RUN_DIR"/*

echo "recover_pod: fetching s3://$PGOPS_S3_BUCKET/$PGOPS_S3_KEY into $DATA"
fetched=$("$PYTHON" - "$DATA" 2>&1 <<'PY'
import io, os, sys, tarfile

import boto3
import zstandard

target = sys.argv[1]
s3 = boto3.client("s3", endpoint_url=os.environ.get("PGOPS_S3_ENDPOINT") or None,
                  region_name=os.environ.get("PGOPS_S3_REGION") or "us-east-1")
try:
    body = s3.get_object(Bucket=os.environ["PGOPS_S3_BUCKET"], Key=os.environ["PGOPS_S3_KEY"])["Body"]
    with zstandard.ZstdDecompressor().stream_reader(body) as stream:
        with tarfile.open(fileobj=io.BufferedReader(stream, 1 << 20), mode="r|") as tar:
            # pg_ops's own pg_basebackup tar; PGDATA's files as they are (modes, links).
            extra = {"filter": "fully_trusted"} if hasattr(tarfile, "fully_trusted_filter") else {}
            tar.extractall(target, **extra)
except Exception as exc:  # one line for the termination log
    print(f"{type(exc).__name__}: {exc}".splitlines()[0])
    sys.exit(1)
PY
) || fail "base backup s3://$PGOPS_S3_BUCKET/$PGOPS_S3_KEY not restored: ${fetched:-no output}"
[ -f "$DATA/backup_label" ] || fail "base backup s3://$PGOPS_S3_BUCKET/$PGOPS_S3_KEY: no backup_label in its tar"

# What the source's data dir carried that this server must not act on: its replica and sync
# settings (postgresql.auto.conf; a synchronous_standby_names here would hold every commit),
# signals, a pid file. pg_ops's configuration is the only one read.
rm -f "$DATA/standby.signal" "$DATA/postmaster.pid" "$DATA/postmaster.opts" "$DATA/postgresql.auto.conf"
mkdir -p "$DATA/pg_wal/archive_status"
touch "$DATA/recovery.signal"
chmod 700 "$DATA"

"${BIN}postgres" -D "$DATA" -c "config_file=$RUN_DIR/postgresql.conf" -c "hba_file=$RUN_DIR/pg_hba.conf" \
    -c "port=$PORT" -c "listen_addresses=$LISTEN" -c "unix_socket_directories=$SOCKET_DIR" >"$LOG" 2>&1 &
pid=$!
trap 'kill -INT "$pid" 2>/dev/null' TERM INT
tail -n +1 -F "$LOG" 2>/dev/null &
tailer=$!

# Promoted: the local socket answers and the server is out of recovery. The password is set once.
set_password() {
    local state
    state=$("${BIN}psql" -X -At -h "$SOCKET_DIR" -p "$PORT" -U postgres -d postgres \
        -c "select pg_is_in_recovery()" 2>/dev/null) || return 1
    [ "$state" = "f" ] || return 1
    "${BIN}psql" -X -q -h "$SOCKET_DIR" -p "$PORT" -U postgres -d postgres -v ON_ERROR_STOP=1 \
        -f "$RUN_DIR/superuser.sql" >/dev/null 2>&1
}
password_set=""
while kill -0 "$pid" 2>/dev/null; do
    if [ -z "$password_set" ]; then
        if set_password; then
            password_set=1
            echo "recover_pod: promoted; the superuser's password is the credentials store's"
            if [ "$THEN" = stop ]; then
                # A clean shutdown: the member script starts these files as the primary next.
                "${BIN}pg_ctl" stop -D "$DATA" -m fast -w -t 300 >/dev/null 2>&1 \
                    || fail "the recovered server did not stop cleanly after its promotion"
                wait "$pid" 2>/dev/null
                kill "$tailer" 2>/dev/null
                rm -rf "$RUN_DIR" "$SOCKET_DIR"
                echo "recover_pod: recovered, promoted and stopped cleanly"
                exit 0
            fi
        fi
    fi
    sleep 0.2
done
wait "$pid"
status=$?
kill "$tailer" 2>/dev/null
fatal=$(grep -E 'FATAL|PANIC' "$LOG" | grep -v 'the database system is' | tail -n 1 | sed -E 's/^.*(FATAL|PANIC): +//')
fail "postgres exited ($status)${fatal:+: $fatal}"

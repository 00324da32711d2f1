#!/usr/bin/env bash
# pg_ops member supervisor: the data plane beside one PostgreSQL server.
#
# The same script runs on both platforms: the local platform starts it as the parent of a
# postgres process on a loopback port; the Kubernetes StatefulSet runs it as the container
# command of the official postgres image (which has bash and the PostgreSQL tools, but no
# Python - hence bash). It never decides topology: it reads the desired-state record that
# pg_ops writes (key=value lines; on Kubernetes a ConfigMap key mounted as a file) and makes
# this member match it:
#   - empty data dir, designated primary, bootstrap=true      -> initdb
#   - empty data dir otherwise                                  -> clone from the primary
#                                                                 (never initdb: a new empty
#                                                                 cluster that reads as healthy
#                                                                 is the worst outcome)
#   - system identifier differs from the record                 -> refuse to start, loudly
#   - not the designated primary, no standby.signal             -> pg_rewind (fallback: re-clone)
#   - replica on another timeline than the primary              -> pg_rewind first
#   - replica                                                   -> primary_conninfo/slot rewritten
#   - designated primary that still has standby.signal          -> start, then promote
# Then it stays the parent of postgres and re-reads the record every second: a member that is
# writable but not the designated primary stops itself (fast shutdown) and comes back as a
# replica. If postgres dies, the boot logic runs again (recovered in place, as a kubelet would).
#
# Environment (all required unless a default is shown):
#   PGOPS_MEMBER       this member's name (e.g. local-1)
#   PGOPS_DATA         data directory
#   PGOPS_PORT         port postgres listens on
#   PGOPS_STATE        desired-state file
#   PGOPS_CONFIG_DIR   folder with postgresql.conf and pg_hba.conf (cluster-wide settings)
#   PGOPS_PASSFILE     libpq passfile with the postgres and replicator passwords
#   PGOPS_RUN_DIR      private scratch folder (copied passfile)
#   PGOPS_BIN          PostgreSQL bin folder (default: from PATH)
#   PGOPS_LISTEN       listen_addresses (default 127.0.0.1)
#   PGOPS_SOCKET_DIR   unix_socket_directories (default: none, TCP only)
set -u

MEMBER=${PGOPS_MEMBER:?PGOPS_MEMBER is required}
DATA=${PGOPS_DATA:?PGOPS_DATA is required}
PORT=${PGOPS_PORT:?PGOPS_PORT is required}
STATE=${PGOPS_STATE:?PGOPS_STATE is required}
CONFIG_DIR=${PGOPS_CONFIG_DIR:?PGOPS_CONFIG_DIR is required}
RUN_DIR=${PGOPS_RUN_DIR:?PGOPS_RUN_DIR is required}
LISTEN=${PGOPS_LISTEN:-127.0.0.1}
SOCKET_DIR=${PGOPS_SOCKET_DIR:-}
if [ -n "${PGOPS_BIN:-}" ]; then BIN="$PGOPS_BIN/"; else BIN=""; fi
SLOT=${MEMBER//-/_}
PASSFILE="$RUN_DIR/pgpass"
PG_PID=""
STOPPING=0

log() { printf '%s member %s: %s\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$MEMBER" "$*"; }
die() { log "FATAL: $*"; exit 1; }

# --- the desired-state record -------------------------------------------------------------
sget() { sed -n "s/^$1=//p" "$STATE" 2>/dev/null | tail -n 1; }
primary_name() { sget primary; }
member_addr() { sget "member.$1"; }   # host:port

wait_for_state() {
    local n=0
    until [ -r "$STATE" ] && [ -n "$(primary_name)" ]; do
        [ $((n % 30)) -eq 0 ] && log "waiting for the desired-state record $STATE"
        n=$((n + 1)); sleep 1
    done
}

# --- PostgreSQL facts ---------------------------------------------------------------------
has_data() { [ -f "$DATA/PG_VERSION" ]; }
is_standby_dir() { [ -f "$DATA/standby.signal" ]; }
control() { LC_ALL=C "${BIN}pg_controldata" -D "$DATA" 2>/dev/null | sed -n "s/^$1: *//p"; }
local_sysid() { control "Database system identifier"; }
local_tli() { control "Latest checkpoint's TimeLineID"; }

primary_conn() {   # libpq keywords reaching the designated primary as $1
    local addr; addr=$(member_addr "$(primary_name)")
    printf 'host=%s port=%s user=%s passfile=%s connect_timeout=3' \
        "${addr%:*}" "${addr##*:}" "$1" "$PASSFILE"
}
primary_reachable() {
    "${BIN}psql" -X -At -d "$(primary_conn postgres) dbname=postgres" -c "select 1" >/dev/null 2>&1
}
primary_tli() {
    "${BIN}psql" -X -At -d "$(primary_conn postgres) dbname=postgres" \
        -c "select ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int" 2>/dev/null
}

prepare_private_files() {
    mkdir -p "$RUN_DIR" && chmod 700 "$RUN_DIR" || die "cannot create $RUN_DIR"
    # Kubernetes mounts Secrets group-readable; libpq ignores such a passfile. Keep a 0600 copy.
    (umask 077 && cp "${PGOPS_PASSFILE:?PGOPS_PASSFILE is required}" "$PASSFILE.tmp" && mv "$PASSFILE.tmp" "$PASSFILE") \
        || die "cannot read the passfile $PGOPS_PASSFILE"
}

superuser_password() { awk -F: '$4 == "postgres" { print $5; exit }' "$PASSFILE"; }

# --- boot actions -------------------------------------------------------------------------
wipe_data() { find "$DATA" -mindepth 1 -delete 2>/dev/null; mkdir -p "$DATA"; chmod 700 "$DATA"; }

run_initdb() {
    log "initdb (designated primary of a cluster not bootstrapped yet)"
    mkdir -p "$DATA" && chmod 700 "$DATA"
    local pw; pw=$(superuser_password)
    [ -n "$pw" ] || die "the passfile has no password for postgres"
    "${BIN}initdb" -D "$DATA" -U postgres --pwfile=<(printf '%s\n' "$pw") --data-checksums \
        --auth-local=scram-sha-256 --auth-host=scram-sha-256 --encoding=UTF8 --locale=C \
        --no-instructions >/dev/null || die "initdb failed"
}

write_standby_config() {
    # primary_conninfo/primary_slot_name go to postgresql.auto.conf (not the command line), so
    # pg_ops can repoint a running replica with ALTER SYSTEM + reload.
    local addr conninfo auto="$DATA/postgresql.auto.conf"
    addr=$(member_addr "$(primary_name)")
    conninfo="host=${addr%:*} port=${addr##*:} user=replicator passfile=$PASSFILE application_name=$MEMBER connect_timeout=3"
    touch "$auto"
    grep -v -E "^(primary_conninfo|primary_slot_name) " "$auto" > "$auto.tmp" || true
    printf "primary_conninfo = '%s'\nprimary_slot_name = '%s'\n" "$conninfo" "$SLOT" >> "$auto.tmp"
    mv "$auto.tmp" "$auto"
    touch "$DATA/standby.signal"
}

clone_from_primary() {
    local n=0
    while [ "$STOPPING" = 0 ]; do
        if [ "$(primary_name)" = "$MEMBER" ]; then
            # Designated primary with no data in a bootstrapped cluster: nothing to clone from.
            die "designated primary but the data dir is empty and the cluster is bootstrapped; refusing initdb (fail over to a replica)"
        fi
        if ! primary_reachable; then
            # Never wipe anything while the primary cannot be reached: keep what we have.
            [ $((n % 15)) -eq 0 ] && log "primary $(primary_name) unreachable; waiting before cloning"
            n=$((n + 1)); sleep 2; continue
        fi
        wipe_data
        log "cloning from primary $(primary_name) with pg_basebackup (slot $SLOT)"
        if "${BIN}pg_basebackup" -d "$(primary_conn replicator)" -D "$DATA" -X stream -S "$SLOT" \
                -c fast --no-password 2>"$RUN_DIR/basebackup.err"; then
            write_standby_config
            log "clone complete"
            return 0
        fi
        n=$((n + 1))
        log "clone failed (attempt $n): $(tail -n 1 "$RUN_DIR/basebackup.err")"
        sleep 2
    done
    return 1
}

rewind_from_primary() {
    log "pg_rewind from primary $(primary_name)"
    if "${BIN}pg_rewind" -D "$DATA" --source-server="$(primary_conn postgres) dbname=postgres" \
            >"$RUN_DIR/rewind.log" 2>&1; then
        log "rewind: $(tail -n 1 "$RUN_DIR/rewind.log")"
        return 0
    fi
    log "rewind failed: $(tail -n 1 "$RUN_DIR/rewind.log")"
    return 1
}

boot() {
    wait_for_state
    local primary sysid want_sysid bootstrap
    primary=$(primary_name)
    bootstrap=$(sget bootstrap)
    if ! has_data; then
        if [ "$primary" = "$MEMBER" ] && [ "$bootstrap" = "true" ]; then
            run_initdb
        else
            clone_from_primary || return 1
        fi
    fi
    want_sysid=$(sget system_identifier)
    sysid=$(local_sysid)
    if [ -n "$want_sysid" ] && [ "$sysid" != "$want_sysid" ]; then
        die "data dir $DATA belongs to another cluster (system identifier $sysid, expected $want_sysid); refusing to start"
    fi
    if [ "$primary" != "$MEMBER" ]; then
        if ! is_standby_dir; then
            primary_reachable || { log "not the designated primary and $primary is unreachable: waiting"; return 1; }
            log "not the designated primary ($primary) but the data dir is not a standby: rewinding"
            rewind_from_primary || { log "re-cloning instead"; clone_from_primary || return 1; }
        else
            local mine theirs
            mine=$(local_tli); theirs=$(primary_tli)
            if [ -n "$theirs" ] && [ -n "$mine" ] && [ "$mine" != "$theirs" ]; then
                log "replica on timeline $mine, primary on $theirs: checking for divergence"
                rewind_from_primary || { log "re-cloning instead"; clone_from_primary || return 1; }
            fi
        fi
        write_standby_config
    fi
    return 0
}

start_postgres() {
    local args=(-D "$DATA" -p "$PORT"
        -c "config_file=$CONFIG_DIR/postgresql.conf" -c "hba_file=$CONFIG_DIR/pg_hba.conf"
        -c "ident_file=$CONFIG_DIR/pg_ident.conf"
        -c "listen_addresses=$LISTEN" -c "cluster_name=$MEMBER"
        -c "unix_socket_directories=$SOCKET_DIR")
    log "starting postgres on port $PORT as $(is_standby_dir && echo replica || echo primary)"
    "${BIN}postgres" "${args[@]}" &
    PG_PID=$!
    if [ "$(primary_name)" = "$MEMBER" ] && is_standby_dir; then
        # Promotion was interrupted (or the control plane designated us while we were down).
        sleep 1
        log "designated primary still in recovery: promoting"
        "${BIN}pg_ctl" promote -D "$DATA" -W >/dev/null 2>&1 || log "promote request failed"
    fi
}

pg_alive() { [ -n "$PG_PID" ] && kill -0 "$PG_PID" 2>/dev/null; }

stop_postgres() {   # fast shutdown, then wait
    pg_alive || return 0
    kill -INT "$PG_PID" 2>/dev/null
    wait "$PG_PID" 2>/dev/null
    PG_PID=""
}

on_term() {
    STOPPING=1
    log "stop requested: fast shutdown"
    stop_postgres
    exit 0
}
trap on_term TERM INT

prepare_private_files
log "supervisor started (pid $$)"
while [ "$STOPPING" = 0 ]; do
    if ! boot; then
        log "boot failed; retrying in 5 s"
        sleep 5 & wait $!
        continue
    fi
    start_postgres
    while [ "$STOPPING" = 0 ]; do
        sleep 1 & wait $!
        if ! pg_alive; then
            wait "$PG_PID" 2>/dev/null; rc=$?
            log "postgres exited (status $rc): booting again"
            PG_PID=""
            sleep 1
            break
        fi
        if [ "$(primary_name)" != "$MEMBER" ] && [ -n "$(primary_name)" ] && ! is_standby_dir; then
            log "writable but the designated primary is $(primary_name): stopping (fast) to rejoin as a replica"
            stop_postgres
            break
        fi
    done
done

#!/usr/bin/env bash
# Kubernetes probes of a pg_ops member, run by the kubelet inside the postgres container (mounted
# from the member-script ConfigMap next to member.sh; same environment as member.sh).
#
#   probe.sh startup                 postgres accepts connections, OR the member script is busy
#   probe.sh live                    the same: a restart would only start a clone/rewind over
#   probe.sh ready MAX_S MAX_BYTES   accepts connections, and a replica is streaming with its
#                                    replay no further behind than MAX_S seconds / MAX_BYTES bytes
#
# "Busy" comes from the status file member.sh keeps ($PGOPS_RUN_DIR/member-status: phase=,
# since=, pid=, reason=): while its supervisor is alive and in phase waiting (for the desired
# state, the data directory lock or an unreachable primary), initdb, recovering, upgrading, cloning, rewinding,
# starting (postgres launched, recovery running) or stopping, postgres is not expected to answer
# and a restart would not help. So a clone or a rewind of any length is never killed, and the
# startup probe's failureThreshold x periodSeconds only bounds the time a member is neither
# answering nor doing any of these. A member that refused to start (phase refused: data of
# another cluster) fails, with the reason in the probe's output (the pod's events).
#
# Lag is judged on the replica itself: "not streaming" is not ready (a disconnected replica reads
# as lag 0 in most tools), and replay time only counts while WAL is waiting to be replayed (on an
# idle cluster now() - pg_last_xact_replay_timestamp() grows forever).
#
# Environment: PGOPS_PORT, PGOPS_RUN_DIR (the status file and the 0600 passfile copy member.sh
# keeps), PGOPS_BIN.
set -u
MODE=${1:?usage: probe.sh startup|live|ready MAX_S MAX_BYTES}
PORT=${PGOPS_PORT:?PGOPS_PORT is required}
RUN_DIR=${PGOPS_RUN_DIR:?PGOPS_RUN_DIR is required}
if [ -n "${PGOPS_BIN:-}" ]; then BIN="$PGOPS_BIN/"; else BIN=""; fi

accepting() { "${BIN}pg_isready" -q -h 127.0.0.1 -p "$PORT" -t 3; }
status() { sed -n "s/^$1=//p" "$RUN_DIR/member-status" 2>/dev/null | tail -n 1; }
describe() { echo "member $(status phase) since $(status since)${1:+: $1}"; }

busy() {   # the member script is alive and doing something postgres cannot answer during
    local pid; pid=$(status pid)
    [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 1
    case "$(status phase)" in
        waiting|initdb|recovering|upgrading|cloning|rewinding|starting|stopping) return 0 ;;
    esac
    return 1
}

alive_or_busy() {
    accepting && return 0
    if busy; then describe "$(status reason)"; return 0; fi
    if [ "$(status phase)" = refused ]; then describe "$(status reason)"; return 1; fi
    echo "postgres is not accepting connections ($(describe))"
    return 1
}

replication_verdict() {
    local max_s=$1 max_bytes=$2
    PGPASSFILE="$RUN_DIR/pgpass" PGCONNECT_TIMEOUT=3 \
    "${BIN}psql" -X -At -h 127.0.0.1 -p "$PORT" -U postgres -d postgres -v ON_ERROR_STOP=1 -c "
        select case
          when not pg_is_in_recovery() then 'ok'
          when not exists (select 1 from pg_stat_wal_receiver r where r.status = 'streaming' and r.sender_host is not null
                           and exists (select 1 from pg_stat_activity a where a.pid = r.pid
                                       and a.backend_start < clock_timestamp() - interval '500 milliseconds'))
            then 'replica is not streaming from the primary'
          when pg_wal_lsn_diff(pg_last_wal_receive_lsn(), pg_last_wal_replay_lsn()) > $max_bytes
            then 'replay is more than $max_bytes bytes behind what was received'
          when pg_last_wal_receive_lsn() <> pg_last_wal_replay_lsn()
               and now() - pg_last_xact_replay_timestamp() > interval '$max_s seconds'
            then 'replay is more than $max_s s behind'
          else 'ok' end"
}

case "$MODE" in
    startup|live) alive_or_busy ;;
    ready)
        accepting || { echo "postgres is not accepting connections ($(describe))"; exit 1; }
        verdict=$(replication_verdict "${2:?MAX_S}" "${3:?MAX_BYTES}") || { echo "lag query failed"; exit 1; }
        [ "$verdict" = ok ] || { echo "$verdict"; exit 1; }
        ;;
    *) echo "unknown probe $MODE"; exit 2 ;;
esac

#!/usr/bin/env bash
# Kubernetes probes of a pg_ops member, run by the kubelet inside the postgres container (mounted
# from the member-script ConfigMap next to member.sh; same environment as member.sh).
#
#   probe.sh startup                 postgres accepts connections
#   probe.sh live                    postgres accepts connections, OR the member script is busy
#                                    cloning / rewinding (a restart would only start that over)
#   probe.sh ready MAX_S MAX_BYTES   accepts connections, and a replica is streaming with its
#                                    replay no further behind than MAX_S seconds / MAX_BYTES bytes
#
# Lag is judged on the replica itself: "not streaming" is not ready (a disconnected replica reads
# as lag 0 in most tools), and replay time only counts while WAL is waiting to be replayed (on an
# idle cluster now() - pg_last_xact_replay_timestamp() grows forever).
#
# Environment: PGOPS_PORT, PGOPS_RUN_DIR (the 0600 passfile copy member.sh keeps), PGOPS_BIN.
set -u
MODE=${1:?usage: probe.sh startup|live|ready MAX_S MAX_BYTES}
PORT=${PGOPS_PORT:?PGOPS_PORT is required}
if [ -n "${PGOPS_BIN:-}" ]; then BIN="$PGOPS_BIN/"; else BIN=""; fi

accepting() { "${BIN}pg_isready" -q -h 127.0.0.1 -p "$PORT" -t 3; }
busy_rebuilding() { grep -qsx -e pg_basebackup -e pg_rewind /proc/[0-9]*/comm; }

replication_verdict() {
    local max_s=$1 max_bytes=$2
    PGPASSFILE="${PGOPS_RUN_DIR:?PGOPS_RUN_DIR is required}/pgpass" PGCONNECT_TIMEOUT=3 \
    "${BIN}psql" -X -At -h 127.0.0.1 -p "$PORT" -U postgres -d postgres -v ON_ERROR_STOP=1 -c "
        select case
          when not pg_is_in_recovery() then 'ok'
          when not exists (select 1 from pg_stat_wal_receiver where status = 'streaming')
            then 'replica is not streaming from the primary'
          when pg_wal_lsn_diff(pg_last_wal_receive_lsn(), pg_last_wal_replay_lsn()) > $max_bytes
            then 'replay is more than $max_bytes bytes behind what was received'
          when pg_last_wal_receive_lsn() <> pg_last_wal_replay_lsn()
               and now() - pg_last_xact_replay_timestamp() > interval '$max_s seconds'
            then 'replay is more than $max_s s behind'
          else 'ok' end"
}

case "$MODE" in
    startup) accepting ;;
    live) accepting || busy_rebuilding ;;
    ready)
        accepting || { echo "postgres is not accepting connections"; exit 1; }
        verdict=$(replication_verdict "${2:?MAX_S}" "${3:?MAX_BYTES}") || { echo "lag query failed"; exit 1; }
        [ "$verdict" = ok ] || { echo "$verdict"; exit 1; }
        ;;
    *) echo "unknown probe $MODE"; exit 2 ;;
esac

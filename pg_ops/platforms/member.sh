#!/usr/bin/env bash
# pg_ops member supervisor: the data plane beside one PostgreSQL server.
#
# The same script runs on both platforms: the local platform starts it as the parent of a
# postgres process on a loopback port; the Kubernetes StatefulSet runs it as the container
# command of the official postgres image (which has bash and the PostgreSQL tools, but no
# Python - hence bash). It never decides topology: it reads the desired-state record that
# pg_ops writes (key=value lines; on Kubernetes a ConfigMap key mounted as a file) and makes
# this member match it (in brackets: the boot.action it reports, see below):
#   - empty data dir, designated primary, bootstrap=true      -> initdb                  [initdb]
#     ... and the record names a recovery (`pg-ops recover`)   -> restore the base backup and
#                                                                 replay to the target with the
#                                                                 recovery Secret's inputs
#                                                                 (recover_pod.sh), once its token
#                                                                 is mounted; never initdb [recover]
#                                                                 (a failure is kept and refused
#                                                                 again at every boot; a restore cut
#                                                                 short is wiped and started over)
#   - empty data dir otherwise                                  -> clone from the primary [clone]
#                                                                 (never initdb: a new empty
#                                                                 cluster that reads as healthy
#                                                                 is the worst outcome)
#   - empty data dir, designated primary, bootstrapped          -> refuse to start       [refused]
#   - system identifier differs from the record                 -> refuse to start, loudly [refused]
#   - not the designated primary, no standby.signal             -> pg_rewind              [rewind]
#                                                                 (fallback: re-clone)   [reclone]
#   - replica on another timeline than the primary              -> pg_rewind first        [rewind]
#   - replica                                                   -> primary_conninfo/slot rewritten,
#                                                                 start as a standby     [standby]
#   - designated primary                                        -> start                  [primary]
#   - designated primary that still has standby.signal          -> start, then promote    [promote]
#   - designated primary, data of an older major, the record    -> pg_upgrade --link from  [upgrade]
#     names an upgrade to a newer one (`pg-ops upgrade`;           this image's two majors,
#     an image with several majors: PGOPS_BINS)                    then wait for pg_ops's go
#                                                                 (the record's new system
#                                                                 identifier) or its undo
#     ... but isolated at the record's epoch                    -> start as a standby     [isolated]
#   - no record, or the primary unreachable for a clone/rewind  -> wait, touch nothing    [wait]
#   - fenced by pg_ops at an epoch the record has not reached   -> wait, touch nothing    [wait]
#     (Kubernetes: the failover's exec writes $STATE_DIR/pg_ops-fenced before it stops
#     postgres; the record file here may lag behind by the kubelet's ConfigMap sync)
# Then it stays the parent of postgres and re-reads the record every second: a member that is
# writable but not the designated primary stops itself (fast shutdown) and comes back as a
# replica. If postgres dies, the boot logic runs again (recovered in place, as a kubelet would).
#
# Isolation fencing (the record's isolation.lease_seconds, 0 = off): the designated primary
# checks every second, through its own local port, when pg_ops last renewed its lease (a row
# in its pg_ops database) and whether a standby streams from it. Neither for lease_seconds
# (an unreadable record counts as a stale lease): it is cut off from everyone, and restarts
# as a standby, so it stops acknowledging writes but still serves reads. It never promotes
# itself back: pg_ops does, when it reaches it again and it is still the one to promote.
#
# Writes a rewind or a re-clone throws away are counted first (pg_rewind --dry-run for the
# fork point, pg_waldump for what lies beyond it) and reported in $STATE_DIR/pg_ops-report;
# a diverged data dir is moved aside, never deleted, when it has to be re-cloned.
#
# $STATE_DIR/pg_ops-report is what pg_ops reads (Platform.member_report): key=value lines, a
# key replaced in place, an empty value meaning none:
#   boot.action, boot.reason, boot.at   the boot table's row this supervisor took last (bracketed
#                                       above), its reason or detail (for refused: die()'s message;
#                                       for wait: what it waits for), since when (epoch seconds;
#                                       unchanged while it repeats the same row). Cleared when a
#                                       supervisor takes the data directory lock.
#   isolated.at, isolated.reason        set when isolation fencing restarted this primary as a
#                                       standby; isolated.at is cleared once pg_ops acted
#   upgrade.id, upgrade.step,           the record's upgrade this member works on, where it is
#   upgrade.reason,                     (initdb, checked, linked, started, failed, undone), why it
#   upgrade.system_identifier           failed, the upgraded data dir's identifier (pg_ops's go)
#   discarded.*                         the writes the last rewind or re-clone threw away
#                                       (discarded.unknown: why they could not be counted)
#
# Environment (all required unless a default is shown):
#   PGOPS_MEMBER       this member's name (e.g. local-1)
#   PGOPS_DATA         data directory
#   PGOPS_PORT         port postgres listens on
#   PGOPS_STATE        desired-state file
#   PGOPS_CONFIG_DIR   folder with postgresql.conf and pg_hba.conf (cluster-wide settings)
#   PGOPS_PASSFILE     libpq passfile with the postgres and replicator passwords
#   PGOPS_RUN_DIR      private scratch folder (copied passfile)
#   PGOPS_BIN          PostgreSQL bin folder (default: from PATH): the image's own major, which
#                      makes new data (initdb, clone, recovery)
#   PGOPS_BINS         the bin folder of every major the image has, {major} in place of the number
#                      (default none: PGOPS_BIN for any data). With it, a data dir runs with the
#                      major that made it (a pod restarted on an image with a newer major keeps
#                      serving its data), and the designated primary upgrades in place when the
#                      record asks ([upgrade])
#   PGOPS_LISTEN       listen_addresses (default 127.0.0.1)
#   PGOPS_SOCKET_DIR   unix_socket_directories (default: none, TCP only)
#   PGOPS_STATE_DIR    durable files of this member: the isolation marker, the report of
#                      discarded writes, data dirs kept aside (default: PGOPS_DATA's parent,
#                      the data volume on Kubernetes)
#   PGOPS_LOCK_FILE    the data directory's lock, held for the script's lifetime (default:
#                      member.lock beside PGOPS_DATA, i.e. on the same volume)
#   PGOPS_STOP_SECONDS            on TERM, the whole shutdown's budget (default 25)
#   PGOPS_TIMELINE_CHECK_SECONDS  how often a standby that does not stream compares its timeline
#                                 with the primary's (default 10)
#   PGOPS_CHECKPOINT_SECONDS      of it, the CHECKPOINT taken while still serving (default 10)
#   PGOPS_SMART_STOP_SECONDS      of it, how long a primary with transactions in flight waits
#                                 for its sessions (smart) before a fast shutdown (default 5)
#   PGOPS_TERMINATION_LOG         where a refusal's reason also goes when the script exits
#                                 (Kubernetes: the container's termination message; default none)
#   PGOPS_RECOVERY_DIR            the recovery Secret's files when the record names a recovery
#                                 (recover_pod.sh, its inputs, `token`; default none)
#
# Boot-time safety (before any boot action): the lock (flock on PGOPS_LOCK_FILE, inherited by
# postgres, so it is held until the last process of this member is gone) keeps a second copy of
# this script - a replacement pod on the same ReadWriteOnce volume while the old container is
# still stopping - from rewinding or wiping a data directory a postmaster still uses; it waits.
# What it is doing is in $PGOPS_RUN_DIR/member-status (phase=waiting|initdb|recovering|upgrading|cloning|rewinding|
# starting|running|stopping|refused, since=, pid=, reason=), which probe.sh reads.
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
IMAGE_BIN=$BIN        # BIN becomes the data dir's major's at each boot (use_data_major)
BINS=${PGOPS_BINS:-}
SLOT=${MEMBER//-/_}
PASSFILE="$RUN_DIR/pgpass"
STATE_DIR=${PGOPS_STATE_DIR:-$(dirname "$DATA")}
REPORT="$STATE_DIR/pg_ops-report"
ISOLATED_MARK="$STATE_DIR/pg_ops-isolated"
FENCED_MARK="$STATE_DIR/pg_ops-fenced"
RECOVERY_DIR=${PGOPS_RECOVERY_DIR:-}
RECOVERING_MARK="$STATE_DIR/pg_ops-recovering"      # a restore under way: its data never served
RECOVERY_FAILED="$STATE_DIR/pg_ops-recovery-failed" # token and reason of a recovery that failed
UPGRADE_MARK="$STATE_DIR/pg_ops-upgrade"            # id=, from=, to=, step=, sysid= of an upgrade under way
UPGRADE_NEW="$STATE_DIR/pg_ops-upgrade-data"        # the new major's data dir until it is swapped in
UPGRADE_WORK="$STATE_DIR/pg_ops-upgrade-work"       # pg_upgrade's working folder, socket and logs
UPGRADE_GO="$STATE_DIR/pg_ops-upgrade-go"           # "<id> <system identifier>": pg_ops's go, by an exec
STATUS="$RUN_DIR/member-status"
LOCK_FILE=${PGOPS_LOCK_FILE:-$(dirname "$DATA")/member.lock}
STOP_S=${PGOPS_STOP_SECONDS:-25}
CHECKPOINT_S=${PGOPS_CHECKPOINT_SECONDS:-10}
SMART_S=${PGOPS_SMART_STOP_SECONDS:-5}
TIMELINE_CHECK_S=${PGOPS_TIMELINE_CHECK_SECONDS:-10}
PG_PID=""
STOPPING=0
WRITABLE_SINCE=0   # when this postgres was first seen writable as the designated primary
LEASE_SEEN=""      # set once a lease row was read: from then on a missing row is no renewal
LAST_LEASE=0       # last second the lease was fresh
LAST_STANDBY=0     # last second a standby streamed from us

# No command substitution in this script spans lines (tested): bash 5.2 can fail to parse one
# that a TERM handler runs while the main loop is inside another - "trap: line 2: unexpected EOF
# while looking for matching `)'" - and the member would not stop. Longer SQL lives here.
# Streaming for real (pg_ops/postgres/topology.py: SETTLED_RECEIVER_SQL): a receiver that cannot
# follow shows 'streaming' for the milliseconds of each attempt, which must not reset the count.
SETTLED_RECEIVER_SQL="select count(*) from pg_stat_wal_receiver r where r.status = 'streaming'
    and r.sender_host is not null and exists (select 1 from pg_stat_activity a where a.pid = r.pid
    and a.backend_start < clock_timestamp() - interval '500 milliseconds')"
BUSY_SESSIONS_SQL="select count(*) from pg_stat_activity where backend_type = 'client backend'
    and state <> 'idle' and pid <> pg_backend_pid() and not pg_is_in_recovery()"

log() { printf '%s member %s: %s\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$MEMBER" "$*"; }
die() {
    log "FATAL: $*"; set_phase refused "$*"; boot_action refused "$*" 2>/dev/null
    # Kubernetes keeps this file's content in the pod status (lastState.terminated.message), so
    # pg_ops reads the refusal while the container waits to restart, when no exec can reach it.
    if [ -n "${PGOPS_TERMINATION_LOG:-}" ]; then
        grep '^boot\.' "$REPORT" > "$PGOPS_TERMINATION_LOG" 2>/dev/null
    fi
    exit 1
}

# --- what this member is doing (probe.sh reads it) ------------------------------------------
current_phase() { sed -n 's/^phase=//p' "$STATUS" 2>/dev/null; }
set_phase() {   # phase [reason]; `since` changes only with the phase
    local reason=${2:-}
    [ "$(current_phase)" = "$1" ] && [ "$(sed -n 's/^reason=//p' "$STATUS" 2>/dev/null)" = "$reason" ] && return 0
    { printf 'phase=%s\nsince=%s\npid=%s\n' "$1" "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$$"
      if [ -n "$reason" ]; then printf 'reason=%s\n' "$reason"; fi; } > "$STATUS.tmp" 2>/dev/null \
        && mv "$STATUS.tmp" "$STATUS"
    return 0
}

# --- what this member did, for pg_ops ($REPORT: Platform.member_report reads it) ---------
report() {   # report KEY VALUE [KEY VALUE]...: key=value lines in $REPORT (replacing those keys) in one rename
    local keys="" lines=""
    while [ $# -ge 2 ]; do
        keys+="${keys:+|}${1//./\\.}"
        lines+="$1=${2//$'\n'/ }"$'\n'
        shift 2
    done
    mkdir -p "$STATE_DIR" 2>/dev/null
    { grep -v -E "^($keys)=" "$REPORT" 2>/dev/null; printf '%s' "$lines"; } > "$REPORT.tmp" && mv "$REPORT.tmp" "$REPORT"
}

BOOT_LAST=""   # the boot.action/boot.reason this supervisor last reported
PASS_ACTION="" # the row the current boot pass took
boot_action() {   # row [reason]: the boot table's row taken (header), for pg_ops; boot.at changes with it
    PASS_ACTION=$1
    [ "$BOOT_LAST" = "$1|${2:-}" ] && return 0
    BOOT_LAST="$1|${2:-}"
    report boot.action "$1" boot.reason "${2:-}" boot.at "$(date -u +%s)"
}

# --- the desired-state record -------------------------------------------------------------
# The record's value of KEY (its last line): read with builtins, no sed, as the primary's loop
# reads it several times a second (a fork and exec each cost more than the whole loop otherwise).
sget() {
    local line value=""
    while IFS= read -r line || [ -n "$line" ]; do
        case $line in "$1="*) value=${line#"$1="} ;; esac
    done 2>/dev/null < "$STATE"
    printf '%s\n' "$value"
}
primary_name() { sget primary; }
member_addr() { sget "member.$1"; }   # host:port

wait_for_state() {
    local n=0
    until [ -r "$STATE" ] && [ -n "$(primary_name)" ]; do
        set_phase waiting "no desired-state record yet ($STATE)"
        boot_action wait "no desired-state record yet ($STATE)"
        [ $((n % 30)) -eq 0 ] && log "waiting for the desired-state record $STATE"
        n=$((n + 1)); sleep 1
    done
}

# --- PostgreSQL facts ---------------------------------------------------------------------
has_data() { [ -f "$DATA/PG_VERSION" ]; }
is_standby_dir() { [ -f "$DATA/standby.signal" ]; }
control() { LC_ALL=C "${BIN}pg_controldata" -D "$DATA" 2>/dev/null | sed -n "s/^$1: *//p"; }
local_sysid() { control "Database system identifier"; }
# This data dir's timeline: the newest of its last checkpoint's and its newest WAL segment's. A
# promoted primary runs on its new timeline before its first checkpoint there (fast promotion),
# and a killed one may never have had it: the control file alone says the old timeline, and the
# count of what a rewind discards would then look for WAL on a timeline it never wrote beyond
# the fork (and report it uncountable).
local_tli() {
    local ckpt wal
    ckpt=$(control "Latest checkpoint's TimeLineID")
    wal=$(ls "$DATA/pg_wal" 2>/dev/null | grep -E '^[0-9A-F]{24}$' | cut -c1-8 | sort | tail -n 1)
    [ -n "$wal" ] && wal=$((16#$wal))
    if [ -n "$ckpt" ] && [ -n "$wal" ] && [ "$wal" -gt "$ckpt" ] 2>/dev/null; then echo "$wal"; else echo "$ckpt"; fi
}

primary_conn() {   # libpq keywords reaching the designated primary as $1
    local addr; addr=$(member_addr "$(primary_name)")
    printf 'host=%s port=%s user=%s passfile=%s connect_timeout=3' \
        "${addr%:*}" "${addr##*:}" "$1" "$PASSFILE"
}
# Every psql here is bounded as a whole, not only its connection: a server that accepted the
# connection and then hangs (a stuck disk, a lock on the lease table, a frozen process) would
# otherwise stall this loop, and with it the isolation check that fences a cut-off primary.
primary_sql() {   # SQL on the designated primary, as the superuser
    timeout 5 "${BIN}psql" -X -At -d "$(primary_conn postgres) dbname=postgres" -c "$1" 2>/dev/null
}
primary_reachable() { primary_sql "select 1" >/dev/null; }
primary_tli() { primary_sql "select ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int"; }
pg_ops_sql() {   # SQL on this member's own server, database pg_ops (the lease), fields split by a space
    timeout 3 "${BIN}psql" -X -At -F ' ' -d "host=127.0.0.1 port=$PORT user=postgres dbname=pg_ops passfile=$PASSFILE connect_timeout=2" \
        -c "$1" 2>/dev/null
}

prepare_private_files() {
    mkdir -p "$RUN_DIR" || die "cannot create $RUN_DIR"
    # On Kubernetes RUN_DIR is an emptyDir: root-owned (group fsGroup), so chmod fails there; it
    # is private to the pod anyway, and the files in it are 0600.
    chmod 700 "$RUN_DIR" 2>/dev/null || true
    copy_passfile || die "cannot read the passfile $PGOPS_PASSFILE"
}

# Kubernetes mounts Secrets group-readable; libpq ignores such a passfile. Keep a 0600 copy, and
# report its generation (pg_ops's first line, "# pg_ops generation N": not a secret), which a
# rotation of the superuser's or replicator's password waits for on every member before it
# changes the password in PostgreSQL.
copy_passfile() {
    (umask 077 && cp "${PGOPS_PASSFILE:?PGOPS_PASSFILE is required}" "$PASSFILE.tmp" && mv "$PASSFILE.tmp" "$PASSFILE") \
        || return 1
    report passfile.generation "$(sed -n '1s/^# pg_ops generation //p' "$PASSFILE")"
}

# The mounted passfile changed (the kubelet synced the credentials Secret after a rotation):
# copied again, so the lease checks and a replica's next connection use the new passwords.
refresh_passfile() {
    cmp -s "$PGOPS_PASSFILE" "$PASSFILE" 2>/dev/null && return 0
    [ -s "$PGOPS_PASSFILE" ] || return 0   # between the kubelet's renames: next second
    copy_passfile && log "the passfile changed: copied again (generation $(sed -n '1s/^# pg_ops generation //p' "$PASSFILE"))"
}

superuser_password() { awk -F: '$4 == "postgres" { print $5; exit }' "$PASSFILE"; }

# --- boot actions -------------------------------------------------------------------------
wipe_data() { find "$DATA" -mindepth 1 -delete 2>/dev/null; mkdir -p "$DATA"; chmod 700 "$DATA"; }

run_initdb() {
    set_phase initdb
    boot_action initdb
    log "initdb (designated primary of a cluster not bootstrapped yet)"
    mkdir -p "$DATA" && chmod 700 "$DATA"
    local pw; pw=$(superuser_password)
    [ -n "$pw" ] || die "the passfile has no password for postgres"
    "${BIN}initdb" -D "$DATA" -U postgres --pwfile=<(printf '%s\n' "$pw") --data-checksums \
        --auth-local=scram-sha-256 --auth-host=scram-sha-256 --encoding=UTF8 --locale=C \
        --no-instructions >/dev/null || die "initdb failed"
}

run_recovery() {   # token: the record's recovery; the mounted Secret must carry the same one
    local token=$1 why
    if [ "$(sed -n 1p "$RECOVERY_FAILED" 2>/dev/null)" = "$token" ]; then
        die "recovery $token failed: $(sed -n 2p "$RECOVERY_FAILED")"
    fi
    if [ -z "$RECOVERY_DIR" ] || [ "$(cat "$RECOVERY_DIR/token" 2>/dev/null)" != "$token" ]; then
        why="recovery $token: its inputs are not mounted yet (Secret ${RECOVERY_DIR:-unset})"
        set_phase waiting "$why"; boot_action wait "$why"
        log "$why: waiting"
        return 1
    fi
    set_phase recovering
    boot_action recover "recovery $token: base backup and replay to the target"
    log "recovery $token: restoring the base backup and replaying the archive to the target"
    : > "$RECOVERING_MARK"
    local failed="$RUN_DIR/recovery-failed"
    rm -f "$failed"
    if ! PGDATA="$DATA" PGOPS_RECOVERY_DIR="$RECOVERY_DIR" PGOPS_RECOVERY_THEN=stop PGOPS_LISTEN="" \
            PGOPS_PORT="$PORT" PGOPS_BIN="${PGOPS_BIN:-}" PGOPS_TERMINATION_LOG="$failed" \
            bash "$RECOVERY_DIR/recover_pod.sh"; then
        why=$(head -n 1 "$failed" 2>/dev/null)
        printf '%s\n%s\n' "$token" "${why:-recover_pod.sh failed without a reason}" > "$RECOVERY_FAILED"
        die "recovery $token failed: ${why:-recover_pod.sh failed without a reason}"
    fi
    rm -f "$RECOVERING_MARK"
    log "recovery $token: promoted and stopped cleanly; starting it as the primary"
    return 0
}

# --- the data dir's major (an image with several: PGOPS_BINS) -----------------------------
major_bin() {   # major: its bin folder in this image (with a trailing /), or status 1
    local dir=${BINS//\{major\}/$1}
    [ -n "$BINS" ] && [ -x "$dir/postgres" ] && printf '%s/' "$dir"
}
data_major() { local v=""; read -r v 2>/dev/null < "$DATA/PG_VERSION"; printf '%s\n' "$v"; }
# A data dir runs with the major that made it: an image with two majors (the upgrade's) restarts a
# member of the old one as it was, and only the [upgrade] row converts its data. Without
# PGOPS_BINS, PGOPS_BIN for any data (postgres itself refuses data of another major).
use_data_major() {
    BIN=$IMAGE_BIN
    [ -n "$BINS" ] && has_data || return 0
    local major; major=$(data_major)
    BIN=$(major_bin "$major") || die "data dir $DATA is PostgreSQL $major and this image has no binaries for it ($BINS)"
}

# --- a major-version upgrade in place (`pg-ops upgrade --to N` on Kubernetes) ----------------
# pg_ops writes upgrade.id, upgrade.to and upgrade.initdb (the old template0's encoding, locale
# and checksums) into the record, then stops the primary's pod; its replacement (the image with
# both majors) finds the old major's data stopped cleanly and: initdb of the new major beside it,
# pg_upgrade --check, pg_upgrade --link, the new data dir in the old one's place (the old kept as
# pg_ops-data-<old>), each step reported. Then it waits for pg_ops: the record's system
# identifier set to the upgraded one (or the same in $UPGRADE_GO, by pg_ops's exec) is the go —
# starting the new server is the point of no return (the two data dirs share files from then
# on), so the old one goes; upgrade.id cleared instead is the undo: the old data dir back as it
# was (pg_upgrade --link renamed its pg_control first: renamed back, it is whole, as PostgreSQL
# documents) and the old major started. A step
# that fails undoes the same way and reports why; the old major then boots as it was. The mark
# file keeps the step across restarts: an upgrade cut short is undone and started over.
mark_get() { sed -n "s/^$1=//p" "$UPGRADE_MARK" 2>/dev/null; }
mark_set() {   # id from to step [sysid]
    printf 'id=%s\nfrom=%s\nto=%s\nstep=%s\nsysid=%s\n' "$1" "$2" "$3" "$4" "${5:-}" > "$UPGRADE_MARK.tmp" \
        && mv "$UPGRADE_MARK.tmp" "$UPGRADE_MARK"
}
undo_upgrade() {   # before the new server started: the old major's data dir as it was
    local old; old="$STATE_DIR/pg_ops-data-$(mark_get from)"
    if [ -d "$old" ]; then   # swapped: $DATA holds the new major's data
        rm -rf "$UPGRADE_NEW"
        mv "$DATA" "$UPGRADE_NEW" && mv "$old" "$DATA" || die "upgrade undo: cannot move $old back to $DATA"
    fi
    if [ -f "$DATA/global/pg_control.old" ]; then mv "$DATA/global/pg_control.old" "$DATA/global/pg_control"; fi
    rm -rf "$UPGRADE_NEW" "$UPGRADE_WORK"
    rm -f "$UPGRADE_MARK" "$UPGRADE_GO"
}
upgrade_failed() {   # reason: reported, the upgrade undone; the old major boots as it was
    log "upgrade $(mark_get id) FAILED: $1; the PostgreSQL $(mark_get from) data dir is back as it was"
    local id from to; id=$(mark_get id); from=$(mark_get from); to=$(mark_get to)
    undo_upgrade
    mark_set "$id" "$from" "$to" failed
    report upgrade.id "$id" upgrade.step failed upgrade.reason "$1"
}
# pg_upgrade starts the old server with its data dir's own postgresql.conf (initdb's), not the
# member's: its shutdown checkpoint would log initdb's max_connections, max_wal_senders, ... as the
# settings a standby must match, and a replica replaying that after an undo pauses for good ("hot
# standby is not possible because of insufficient parameter settings"). The control file holds
# the values the member ran with: the old server gets them again.
old_server_options() {
    LC_ALL=C "${old_bin}pg_controldata" -D "$DATA" 2>/dev/null | awk -F': *' '
        BEGIN { n["wal_level setting"] = "wal_level"; n["wal_log_hints setting"] = "wal_log_hints"
                n["max_connections setting"] = "max_connections"; n["max_worker_processes setting"] = "max_worker_processes"
                n["max_wal_senders setting"] = "max_wal_senders"; n["max_prepared_xacts setting"] = "max_prepared_transactions"
                n["max_locks_per_xact setting"] = "max_locks_per_transaction"
                n["track_commit_timestamp setting"] = "track_commit_timestamp" }
        ($1 in n) && $2 != "" { printf "-c %s=%s ", n[$1], $2 }'
}
upgrade_tool() {   # check|link, with old_bin and new_bin set: pg_upgrade in its working folder
    # The servers pg_upgrade starts listen on a socket only, in a short path of its own (a socket
    # path has at most 107 bytes; the volume's may be longer).
    local socket rc=0; socket=$(mktemp -d /tmp/pg-ops-upgrade.XXXXXX) || { upgrade_failed "cannot create a socket folder in /tmp"; return 1; }
    local args=(--old-bindir "${old_bin%/}" --new-bindir "${new_bin%/}" --old-datadir "$DATA"
        --new-datadir "$UPGRADE_NEW" --username postgres --old-port "$PORT" --new-port "$PORT"
        --socketdir "$socket" --link --jobs 2 --old-options "$(old_server_options)")
    if [ "$1" = check ]; then args+=(--check); fi
    (cd "$UPGRADE_WORK" && PGPASSFILE="$PASSFILE" "${new_bin}pg_upgrade" "${args[@]}") > "$UPGRADE_WORK/$1.log" 2>&1 || rc=$?
    rm -rf "$socket"
    if [ "$rc" != 0 ]; then   # the check that failed (else its last words), and the objects it names
        local out="$UPGRADE_WORK/$1.log" why report
        why=$(awk '/^Checking/ && !/ ok *$/ { on = 1 } on' "$out" | grep -v -e '^ */' -e 'Failure, exiting' -e 'in the file:$' | tr -s '\n ' '  ' | cut -c 1-600)
        [ -n "$why" ] || why=$(grep -v -e '^$' -e '^Failure, exiting' -e '^ */' "$out" | tail -n 3 | tr '\n' ' ')
        for report in "$UPGRADE_NEW"/pg_upgrade_output.d/*/*.txt; do
            if [ -f "$report" ]; then why+=" [${report##*/}: $(head -c 300 "$report" | tr -s '\n ' '  ')]"; fi
        done
        upgrade_failed "pg_upgrade --$1: $why"
        return 1
    fi
}
upgrade_wait() {   # linked: start the new major on pg_ops's go, or undo when it calls the upgrade off
    local id sysid old; id=$(mark_get id); sysid=$(mark_get sysid); old="$STATE_DIR/pg_ops-data-$(mark_get from)"
    set_phase upgrading "PostgreSQL $(mark_get to) ready: waiting for pg_ops's go"
    while [ "$STOPPING" = 0 ]; do
        if [ "$(sget upgrade.id)" != "$id" ]; then
            undo_upgrade
            report upgrade.id "$id" upgrade.step undone upgrade.reason ""
            log "upgrade $id called off by pg_ops: the PostgreSQL $(data_major) data dir is back as it was"
            return 0
        fi
        # The go: the record names the upgraded identifier, or pg_ops said so beside the data (on
        # Kubernetes a running pod's record file lags the kubelet's sync by up to a minute).
        if [ "$(sget system_identifier)" = "$sysid" ] || [ "$(cat "$UPGRADE_GO" 2>/dev/null)" = "$id $sysid" ]; then
            log "upgrade $id: pg_ops's go; starting PostgreSQL $(mark_get to) (the old data dir goes)"
            ( rm -rf "$old" "$UPGRADE_WORK" ) 9>&- &
            rm -f "$UPGRADE_MARK"   # the go file stays: it speaks for the record until that catches up (boot)
            report upgrade.id "$id" upgrade.step started upgrade.reason ""
            return 0
        fi
        sleep 0.2 & wait $!
    done
    return 1
}
run_upgrade() {   # the record's upgrade.id and upgrade.to; status 1: boot again later
    local id=$1 to=$2 from old_bin new_bin state sysid pw opts
    if [ -f "$UPGRADE_MARK" ] && [ "$(mark_get id)" != "$id" ]; then
        if [ "$(mark_get step)" != failed ]; then
            log "upgrade $(mark_get id) is no longer asked for (cut short, or called off): undoing it"
            report upgrade.id "$(mark_get id)" upgrade.step undone upgrade.reason ""
        fi
        undo_upgrade
    fi
    [ -n "$id" ] || return 0
    case $(mark_get step) in
        failed) return 0 ;;   # the old major boots as it was; pg_ops has the reason
        linked) upgrade_wait; return ;;
        initdb|check|link) log "upgrade $id was cut short: starting it over"; undo_upgrade ;;
    esac
    from=$(data_major)
    [ "$(primary_name)" = "$MEMBER" ] && [ "$from" -lt "$to" ] 2>/dev/null || return 0
    boot_action upgrade "PostgreSQL $from to $to"
    mark_set "$id" "$from" "$to" initdb
    old_bin=$(major_bin "$from") || { upgrade_failed "this image has no PostgreSQL $from binaries ($BINS)"; return 0; }
    new_bin=$(major_bin "$to") || { upgrade_failed "this image has no PostgreSQL $to binaries ($BINS)"; return 0; }
    state=$(LC_ALL=C "${old_bin}pg_controldata" -D "$DATA" 2>/dev/null | sed -n 's/^Database cluster state: *//p')
    if [ "$state" != "shut down" ]; then
        upgrade_failed "the PostgreSQL $from server did not stop cleanly (${state:-no control file}): pg_upgrade needs a clean shutdown"
        return 0
    fi
    set_phase upgrading "PostgreSQL $from to $to"
    log "upgrade $id: PostgreSQL $from to $to with pg_upgrade --link"
    rm -rf "$UPGRADE_NEW" "$UPGRADE_WORK"
    mkdir -p "$UPGRADE_WORK" && chmod 700 "$UPGRADE_WORK"
    pw=$(superuser_password)
    read -r -a opts <<< "$(sget upgrade.initdb)"
    if ! "${new_bin}initdb" -D "$UPGRADE_NEW" -U postgres --pwfile=<(printf '%s\n' "$pw") --auth-local=scram-sha-256 \
            --auth-host=scram-sha-256 "${opts[@]}" --no-instructions > "$UPGRADE_WORK/initdb.log" 2>&1; then
        upgrade_failed "initdb of PostgreSQL $to: $(tail -n 2 "$UPGRADE_WORK/initdb.log" | tr '\n' ' ')"
        return 0
    fi
    report upgrade.id "$id" upgrade.step initdb upgrade.reason ""
    mark_set "$id" "$from" "$to" check
    upgrade_tool check || return 0
    report upgrade.id "$id" upgrade.step checked
    mark_set "$id" "$from" "$to" link
    upgrade_tool link || return 0
    mv "$DATA" "$STATE_DIR/pg_ops-data-$from" && mv "$UPGRADE_NEW" "$DATA" \
        || { upgrade_failed "cannot swap the upgraded data dir into $DATA"; return 0; }
    # pg_upgrade carries no configuration: ALTER SYSTEM's settings come across as they are.
    if [ -f "$STATE_DIR/pg_ops-data-$from/postgresql.auto.conf" ]; then
        cp -p "$STATE_DIR/pg_ops-data-$from/postgresql.auto.conf" "$DATA/postgresql.auto.conf"
    fi
    sysid=$(LC_ALL=C "${new_bin}pg_controldata" -D "$DATA" 2>/dev/null | sed -n 's/^Database system identifier: *//p')
    mark_set "$id" "$from" "$to" linked "$sysid"
    report upgrade.id "$id" upgrade.step linked upgrade.system_identifier "$sysid"
    log "upgrade $id: linked (system identifier $sysid)"
    upgrade_wait
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

clone_from_primary() {   # [row]: clone (an empty data dir) or reclone (a diverged one)
    local n=0 row=${1:-clone}
    while [ "$STOPPING" = 0 ]; do
        if [ "$(primary_name)" = "$MEMBER" ]; then
            # Designated primary with no data in a bootstrapped cluster: nothing to clone from.
            die "designated primary but the data dir is empty and the cluster is bootstrapped; refusing initdb (fail over to a replica)"
        fi
        if ! primary_reachable; then
            set_phase waiting "primary $(primary_name) unreachable: nothing to clone from"
            boot_action wait "primary $(primary_name) unreachable: nothing to clone from"
            # Never wipe anything while the primary cannot be reached: keep what we have.
            [ $((n % 15)) -eq 0 ] && log "primary $(primary_name) unreachable; waiting before cloning"
            n=$((n + 1)); sleep 2; continue
        fi
        set_phase cloning "from $(primary_name)"
        boot_action "$row" "from $(primary_name)"
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

# --- what a rewind or re-clone throws away ------------------------------------------------
lsn_int() { local hi=${1%/*} lo=${1#*/}; echo $(( (16#$hi << 32) + 16#$lo )); }

# A rewind or re-clone is about to throw away what this member holds, and it cannot be counted:
# reported all the same (no amounts, the reason), so pg_ops alerts that writes may be lost.
discarded_unknown() {   # reason [fork] [timeline]
    log "discarding what this member held beyond the fork point: NOT COUNTED ($1)"
    report discarded.at "$(date -u +%s)" discarded.from "${2:-}" discarded.to "" discarded.timeline "${3:-}" \
        discarded.bytes "" discarded.transactions "" discarded.kept_aside "" discarded.unknown "$1"
}

count_discarded() {
    # The fork point is where the primary's timeline branched off ours (its timeline history
    # file); what our own WAL holds beyond it on our timeline is what the rewind (or a
    # re-clone) discards: WAL bytes and commits. Counted before pg_rewind, which first runs
    # crash recovery on a killed primary's data dir. What cannot be counted is reported as such.
    local mine theirs history fork dump commits last tot end
    mine=$(local_tli); theirs=$(primary_tli)
    [ -n "$mine" ] || { discarded_unknown "this member's timeline is unreadable (pg_controldata)"; return 0; }
    [ -n "$theirs" ] || { discarded_unknown "the primary's timeline could not be read" "" "$mine"; return 0; }
    [ "$theirs" -gt "$mine" ] 2>/dev/null || return 0   # not behind the primary's timeline: nothing forked off
    history=$(primary_sql "select pg_read_file('pg_wal/' || lpad(upper(to_hex($theirs)), 8, '0') || '.history')")
    fork=$(printf '%s\n' "$history" | awk -v t="$mine" '$1 == t { print $2; exit }')
    if [ -z "$fork" ]; then
        discarded_unknown "timeline $mine is not in the history of the primary's timeline $theirs (unreadable, or this member is off the cluster's history)" "" "$mine"
        return 0
    fi
    dump=$("${BIN}pg_waldump" -p "$DATA/pg_wal" -t "$mine" -s "$fork" 2>"$RUN_DIR/waldump.err")
    last=$(printf '%s\n' "$dump" | grep 'lsn: ' | tail -n 1)
    if [ -z "$last" ] && grep -q -i -E "could not (find|open) file|no such file" "$RUN_DIR/waldump.err" 2>/dev/null; then
        discarded_unknown "the WAL from the fork point $fork is gone (recycled): $(head -n 1 "$RUN_DIR/waldump.err")" "$fork" "$mine"
        return 0
    fi
    [ -n "$last" ] || return 0   # nothing of ours beyond the fork point: nothing discarded
    commits=$(printf '%s\n' "$dump" | grep -c 'desc: COMMIT')
    tot=$(printf '%s\n' "$last" | sed -n 's/.*len (rec\/tot): *[0-9]*\/ *\([0-9]*\),.*/\1/p')
    end=$(printf '%s\n' "$last" | sed -n 's/.*lsn: \([0-9A-F]*\/[0-9A-F]*\),.*/\1/p')
    end=$(( $(lsn_int "$end") + ${tot:-0} ))
    local bytes=$(( end - $(lsn_int "$fork") ))
    end=$(printf '%X/%X' $(( end >> 32 )) $(( end & 0xFFFFFFFF )))
    log "discarding what this member held beyond the fork point: $commits transactions, $bytes bytes of WAL ($fork - $end on timeline $mine)"
    report discarded.at "$(date -u +%s)"
    report discarded.from "$fork"
    report discarded.to "$end"
    report discarded.timeline "$mine"
    report discarded.bytes "$bytes"
    report discarded.transactions "$commits"
    report discarded.kept_aside "" discarded.unknown ""
}

keep_aside() {
    # A diverged data dir about to be replaced by a fresh clone: moved aside, never deleted.
    has_data || return 0
    local aside; aside="${DATA%/}.diverged-$(date -u +%Y%m%dT%H%M%SZ)"
    if mv "$DATA" "$aside" && mkdir -p "$DATA" && chmod 700 "$DATA"; then
        log "kept the diverged data dir aside at $aside (delete it by hand once nothing in it is needed)"
        report discarded.kept_aside "$aside"
        return 0
    fi
    die "cannot move the diverged data dir aside to $aside; refusing to wipe it (free space, or move it yourself)"
}

reclone_diverged() {
    log "re-cloning instead"
    keep_aside
    clone_from_primary reclone
}

rewind_from_primary() {
    count_discarded
    set_phase rewinding "from $(primary_name)"
    boot_action rewind "from $(primary_name)"
    log "pg_rewind from primary $(primary_name)"
    if "${BIN}pg_rewind" -D "$DATA" --source-server="$(primary_conn postgres) dbname=postgres" \
            >"$RUN_DIR/rewind.log" 2>&1; then
        log "rewind: $(tail -n 1 "$RUN_DIR/rewind.log")"
        return 0
    fi
    log "rewind failed: $(tail -n 1 "$RUN_DIR/rewind.log")"
    return 1
}

# pg_ops fenced this member (its exec wrote the marker, then stopped postgres at once) at an
# epoch the record file here has not reached: the file still names the member the failover
# replaced, and booting from it would bring that primary back for replicas not yet repointed.
fenced_ahead() {
    local at
    at=$(sed -n 's/^epoch=//p' "$FENCED_MARK" 2>/dev/null)
    [ -n "$at" ] && [ "$(sget epoch)" -lt "$at" ] 2>/dev/null
}

boot() {
    PASS_ACTION=""
    wait_for_state
    if fenced_ahead; then
        local why
        why="fenced by pg_ops at epoch $(sed -n 's/^epoch=//p' "$FENCED_MARK"); the record here is at epoch $(sget epoch)"
        set_phase waiting "$why"; boot_action wait "$why"
        log "$why: waiting for the record to catch up"
        return 1
    fi
    rm -f "$FENCED_MARK"   # the record has reached the fence's epoch: it decides from here
    use_data_major   # new data (initdb, clone, recovery) is the image's own major
    local primary sysid want_sysid bootstrap recovery
    primary=$(primary_name)
    bootstrap=$(sget bootstrap)
    recovery=$(sget recovery)
    if [ -f "$RECOVERING_MARK" ]; then
        log "a recovery into this data dir was cut short: wiping what it restored (it never served)"
        wipe_data
        rm -f "$RECOVERING_MARK"
    fi
    if ! has_data; then
        if [ "$primary" = "$MEMBER" ] && [ "$bootstrap" = "true" ] && [ -n "$recovery" ]; then
            run_recovery "$recovery" || return 1
        elif [ "$primary" = "$MEMBER" ] && [ "$bootstrap" = "true" ]; then
            run_initdb
        else
            clone_from_primary || return 1
        fi
    fi
    if [ -n "$BINS" ] && { [ -f "$UPGRADE_MARK" ] || [ -n "$(sget upgrade.id)" ]; }; then
        run_upgrade "$(sget upgrade.id)" "$(sget upgrade.to)" || return 1
    fi
    use_data_major
    want_sysid=$(sget system_identifier)
    # An upgrade's go that pg_ops wrote beside the data names the new identifier while this
    # pod's record file still says the upgrade and the old one (the kubelet's sync lags).
    if [ -f "$UPGRADE_GO" ]; then
        local go_id="" go_sysid=""
        read -r go_id go_sysid 2>/dev/null < "$UPGRADE_GO"
        if [ -n "$go_id" ] && [ "$(sget upgrade.id)" = "$go_id" ]; then want_sysid=$go_sysid; else rm -f "$UPGRADE_GO"; fi
    fi
    sysid=$(local_sysid)
    if [ -n "$want_sysid" ] && [ "$sysid" != "$want_sysid" ]; then
        die "data dir $DATA belongs to another cluster (system identifier $sysid, expected $want_sysid); refusing to start"
    fi
    if [ "$primary" != "$MEMBER" ]; then
        if ! is_standby_dir; then
            primary_reachable || { set_phase waiting "primary $primary unreachable: cannot rewind";
                                   boot_action wait "primary $primary unreachable: cannot rewind";
                                   log "not the designated primary and $primary is unreachable: waiting"; return 1; }
            log "not the designated primary ($primary) but the data dir is not a standby: rewinding"
            rewind_from_primary || reclone_diverged || return 1
        else
            local mine theirs
            mine=$(local_tli); theirs=$(primary_tli)
            if [ -n "$theirs" ] && [ -n "$mine" ] && [ "$mine" != "$theirs" ]; then
                log "replica on timeline $mine, primary on $theirs: checking for divergence"
                rewind_from_primary || reclone_diverged || return 1
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
    local row detail=""
    if [ "$(primary_name)" = "$MEMBER" ] && is_standby_dir && isolated_here; then
        row=isolated detail="isolated at epoch $(sget epoch): a standby until pg_ops promotes it"
    elif [ "$(primary_name)" = "$MEMBER" ] && is_standby_dir; then row=promote
    elif is_standby_dir; then row=standby detail="from $(primary_name)"
    else row=primary
    fi
    log "starting postgres on port $PORT as $(is_standby_dir && echo replica || echo primary)"
    set_phase starting
    case $PASS_ACTION in   # a pass that initialised, recovered, cloned or rewound reports that
        initdb|recover|clone|reclone|rewind) ;;
        *) boot_action "$row" "$detail" ;;
    esac
    "${BIN}postgres" "${args[@]}" &
    PG_PID=$!
    mark_running_when_accepting "$PG_PID"
    if [ "$row" = isolated ]; then
        log "isolated earlier (epoch $(sget epoch)): staying a standby until pg_ops promotes this member"
    elif [ "$row" = promote ]; then
        # Promotion was interrupted (or the control plane designated us while we were down).
        sleep 1
        log "designated primary still in recovery: promoting"
        "${BIN}pg_ctl" promote -D "$DATA" -W >/dev/null 2>&1 || { log "promote request failed";
                                                                  boot_action promote "promote request failed"; }
    fi
}

pg_alive() { [ -n "$PG_PID" ] && kill -0 "$PG_PID" 2>/dev/null; }

# --- isolation fencing --------------------------------------------------------------------
lease_seconds() { local l; l=$(sget isolation.lease_seconds); echo "${l%.*}"; }
isolated_here() {   # the marker names the record's current epoch: pg_ops has not acted since
    [ -f "$ISOLATED_MARK" ] && [ "$(sed -n 's/^epoch=//p' "$ISOLATED_MARK")" = "$(sget epoch)" ]
}

# Ages in tenths of a second, measured by the server itself: the lease's (since pg_ops last
# renewed it) and the newest standby reply's (-1: no standby streams). The bound is counted from
# those moments, not from when this loop last saw them fresh, so a cut-off primary stops
# lease_seconds (plus one check and its shutdown) after pg_ops last reached it — the wait a
# failover that cannot confirm the fence allows for (operations/failover.py: LEASE_MARGIN_S).
# Only the cluster's own members count as standbys (their WAL receivers connect with
# application_name = member name): a CDC consumer, pg_receivewal or a clone's pg_basebackup that
# still reaches a cut-off primary must not keep it writable.
lease_sql() {
    local line name names=""
    while IFS= read -r line || [ -n "$line" ]; do   # the other members' names, quoted, comma-separated
        case $line in member.*=*) name=${line%%=*}; name=${name#member.} ;; *) continue ;; esac
        [[ $name =~ ^[a-z0-9-]+$ ]] && [ "$name" != "$MEMBER" ] && names="${names:+$names,}'$name'"
    done 2>/dev/null < "$STATE"
    echo "select coalesce((select holder || ' ' || ceil(extract(epoch from clock_timestamp() - renewed_at) * 10)::int from lease), 'none 0'),
                  coalesce((select ceil(extract(epoch from clock_timestamp() - max(reply_time)) * 10)::int
                              from pg_stat_replication where state = 'streaming'
                               and application_name in (${names:-''})), -1)"
}

now_tenths() { local us=${EPOCHREALTIME/[.,]/}; echo $((us / 100000)); }   # no date(1) fork

isolation_check() {   # returns 1 when this primary is cut off from pg_ops and every standby
    local lease now out holder age reply record_ok=1
    lease=$(lease_seconds)
    if [ -z "$(primary_name)" ]; then
        record_ok=0   # unreadable or empty record: the lease counts as stale
        lease=${LAST_LEASE_SECONDS:-0}
    else
        LAST_LEASE_SECONDS=$lease
    fi
    [ -n "$lease" ] && [ "$lease" -gt 0 ] 2>/dev/null || return 0
    now=$(now_tenths)
    [ "$WRITABLE_SINCE" -gt 0 ] || { WRITABLE_SINCE=$EPOCHSECONDS; LAST_LEASE=$now; LAST_STANDBY=$now; }
    # Our own server not answering is no sign of life from pg_ops or a standby: the ages stay
    # where they were (fail closed), and the bound below still applies.
    out=$(pg_ops_sql "$(lease_sql)") || out="unread 0 -1"
    read -r holder age reply <<< "$out"
    if [ "$holder" = "none" ] && [ -z "$LEASE_SEEN" ]; then
        LAST_LEASE=$now   # no lease yet: pg_ops has not renewed this cluster's lease since it started
    elif [ "$holder" = "none" ] || [ "$holder" = "unread" ]; then
        :   # a lease row that went away, or no answer: no renewal seen
    elif [ "$record_ok" = 1 ] && [ "$holder" = "$MEMBER" ] && [ "${age:-x}" -ge 0 ] 2>/dev/null \
            && [ $((now - age)) -gt "$LAST_LEASE" ]; then
        LAST_LEASE=$((now - age))   # when pg_ops renewed it
    fi
    case "$holder" in none|unread) ;; *) LEASE_SEEN=1 ;; esac
    if [ "${reply:--1}" -ge 0 ] 2>/dev/null && [ $((now - reply)) -gt "$LAST_STANDBY" ]; then
        LAST_STANDBY=$((now - reply))   # when a standby last replied
    fi
    if [ $((now - LAST_LEASE)) -gt $((lease * 10)) ] && [ $((now - LAST_STANDBY)) -gt $((lease * 10)) ]; then
        ISOLATION_REASON="no lease renewal for $(((now - LAST_LEASE) / 10)) s and no standby for $(((now - LAST_STANDBY) / 10)) s (lease ${lease} s)"
        return 1
    fi
    return 0
}

# Our own lease names us, at the record's epoch or later, and pg_ops renewed it lately (it renews
# only the designated primary's lease: every tick, and at promotion): the record file lags behind
# pg_ops (a kubelet's ConfigMap sync, up to about 90 s), so the newer word wins. A lease older
# than that lag plus a topology change's longest wait proves nothing: a stray keeps no protection
# from one it got before the record moved on.
LEASE_FRESH_S=180
lease_is_newer() {
    local out holder epoch age
    out=$(pg_ops_sql "select holder, epoch, ceil(extract(epoch from clock_timestamp() - renewed_at))::int from lease") || return 1
    read -r holder epoch age <<< "$out"
    [ "$holder" = "$MEMBER" ] && [ -n "$epoch" ] && [ "$epoch" -ge "$(sget epoch)" ] 2>/dev/null \
        && [ -n "$age" ] && [ "$age" -le "$LEASE_FRESH_S" ] 2>/dev/null
}

# A standby that started while the primary was unreachable skipped boot's timeline comparison: a
# former primary that fenced itself, say, still on the timeline it diverged on. It never streams
# from the newer timeline by itself. Every TIMELINE_CHECK_S, a standby that answers and does not
# stream compares its timeline with the primary's; three looks in a row that find it behind make it
# boot again (which rewinds it, counting what that discards, or re-clones it keeping its data
# aside). Its timeline is what its server says, as pg_ops's probe reads it: the newest of its last
# restartpoint's, its minimum recovery point's and its newest WAL segment's (a standby that followed
# a promotion may have had no restartpoint on the new timeline yet: the control file alone would
# say it is behind). Anything it cannot read counts as "not behind".
STANDBY_TLI_SQL="select greatest((select timeline_id from pg_control_checkpoint()),
    (select min_recovery_end_timeline from pg_control_recovery()),
    (select max(('x' || substr(name, 1, 8))::bit(32)::int) from pg_ls_waldir() where name ~ '^[0-9A-F]{24}\$'))"
OFF_TIMELINE_SEEN=0
LAST_TIMELINE_CHECK=0
off_timeline_standby() {
    [ $((SECONDS - LAST_TIMELINE_CHECK)) -ge "$TIMELINE_CHECK_S" ] || return 1
    LAST_TIMELINE_CHECK=$SECONDS
    local streaming mine theirs
    streaming=$(own_sql 3 "$SETTLED_RECEIVER_SQL")
    if [ "$(primary_name)" = "$MEMBER" ] || [ -z "$(primary_name)" ] || [ "$streaming" != 0 ]; then
        OFF_TIMELINE_SEEN=0
        return 1
    fi
    mine=$(own_sql 3 "$STANDBY_TLI_SQL"); theirs=$(primary_tli)
    if [ -n "$mine" ] && [ -n "$theirs" ] && [ "$theirs" -gt "$mine" ] 2>/dev/null; then
        OFF_TIMELINE_SEEN=$((OFF_TIMELINE_SEEN + 1))
    else
        OFF_TIMELINE_SEEN=0
    fi
    [ "$OFF_TIMELINE_SEEN" -ge 3 ] && { OFF_TIMELINE_SEEN=0; return 0; }
    return 1
}

demote_isolated() {
    log "ISOLATED: $ISOLATION_REASON: restarting as a standby (no more acknowledged writes)"
    printf 'epoch=%s\nat=%s\nreason=%s\n' "$(sget epoch)" "$(date -u +%s)" "$ISOLATION_REASON" > "$ISOLATED_MARK"
    report isolated.at "$(date -u +%s)" isolated.reason "$ISOLATION_REASON"
    stop_postgres
    # A standby with no upstream: it serves reads and replays nothing until pg_ops decides.
    local auto="$DATA/postgresql.auto.conf"
    grep -v -E "^(primary_conninfo|primary_slot_name) " "$auto" > "$auto.tmp" 2>/dev/null || true
    mv "$auto.tmp" "$auto"
    touch "$DATA/standby.signal"
    WRITABLE_SINCE=0
}

stop_postgres() {   # fast shutdown, then wait
    pg_alive || return 0
    kill -INT "$PG_PID" 2>/dev/null
    wait "$PG_PID" 2>/dev/null
    PG_PID=""
}

# --- shutdown (TERM: the kubelet deleting the pod, or the local platform stopping it) -----
# A CHECKPOINT while still serving, so that the shutdown checkpoint after it is short and the
# kubelet's SIGKILL (terminationGracePeriodSeconds) does not end in crash recovery; then a
# primary with transactions in flight stops smart (no new sessions, the running ones may end)
# for up to SMART_S, then fast; immediate if even that overruns STOP_S. INT: fast at once.
own_sql() {   # seconds, SQL: on this member's own postgres, as the superuser, bounded
    PGPASSFILE="$PASSFILE" PGCONNECT_TIMEOUT=3 timeout "$1" "${BIN}psql" -X -At -h 127.0.0.1 -p "$PORT" \
        -U postgres -d postgres -v ON_ERROR_STOP=1 -c "$2" 2>/dev/null
}

pg_running() {   # unlike kill -0, false for an exited (zombie) postgres
    [ -n "$PG_PID" ] && [ "$(sed 's/.*) //' "/proc/$PG_PID/stat" 2>/dev/null | cut -d' ' -f1)" != Z ] \
        && [ -e "/proc/$PG_PID" ]
}

wait_postgres() {   # up to $1 s; 0 once postgres is gone
    local until=$((SECONDS + $1))
    while pg_running && [ "$SECONDS" -lt "$until" ]; do sleep 0.2; done
    ! pg_running
}

shutdown_postgres() {   # smart seconds (0: fast at once), deadline ($SECONDS)
    local smart=$1 deadline=$2
    pg_running || { PG_PID=""; return 0; }
    if [ "$smart" -gt 0 ]; then
        log "smart shutdown (up to ${smart} s for the sessions to finish)"
        kill -TERM "$PG_PID" 2>/dev/null
        wait_postgres "$smart" || { log "sessions still open: fast shutdown"; kill -INT "$PG_PID" 2>/dev/null; }
    else
        log "fast shutdown"
        kill -INT "$PG_PID" 2>/dev/null
    fi
    if ! wait_postgres $((deadline - SECONDS)); then
        log "shutdown did not finish within ${STOP_S} s: immediate shutdown (crash recovery at the next start)"
        kill -QUIT "$PG_PID" 2>/dev/null
        wait_postgres 10 || kill -KILL "$PG_PID" 2>/dev/null
    fi
    wait "$PG_PID" 2>/dev/null
    PG_PID=""
}

on_term() {
    STOPPING=1
    set_phase stopping "TERM"
    local deadline=$((SECONDS + STOP_S)) smart=0 busy t0=$SECONDS
    if pg_running; then
        if own_sql "$CHECKPOINT_S" "checkpoint" >/dev/null; then
            log "stop requested: checkpoint done in $((SECONDS - t0)) s"
        else
            log "stop requested: checkpoint failed or took more than ${CHECKPOINT_S} s"
        fi
        busy=$(own_sql 5 "$BUSY_SESSIONS_SQL")
        if [ "$(primary_name)" = "$MEMBER" ] && [ "${busy:-0}" -gt 0 ]; then smart=$SMART_S; fi
    fi
    shutdown_postgres "$smart" "$deadline"
    exit 0
}

on_int() {
    STOPPING=1
    set_phase stopping "INT"
    shutdown_postgres 0 $((SECONDS + STOP_S))
    exit 0
}
trap on_term TERM
trap on_int INT

mark_running_when_accepting() {   # in the background: phase=running once postgres accepts
    local pid=$1
    ( while kill -0 "$pid" 2>/dev/null && [ "$(current_phase)" = starting ]; do
          if "${BIN}pg_isready" -q -h 127.0.0.1 -p "$PORT" -t 2; then set_phase running; exit 0; fi
          sleep 1
      done ) 9>&- &
}

# --- the data directory's lock (before any boot action) -----------------------------------
take_data_lock() {
    mkdir -p "$(dirname "$LOCK_FILE")" 2>/dev/null
    exec 9>>"$LOCK_FILE" || die "cannot open the data directory lock $LOCK_FILE"
    local n=0
    until flock -n 9; do
        set_phase waiting "another instance of $MEMBER still holds $LOCK_FILE"
        [ $((n % 30)) -eq 0 ] && log "another instance of this member still runs on this data directory (its pod is still stopping?): waiting for $LOCK_FILE"
        n=$((n + 1))
        sleep 1 & wait $!
    done
    [ "$n" -gt 0 ] && log "data directory lock taken after ${n} s"
    return 0
}

prepare_private_files
take_data_lock
report boot.action "" boot.reason "" boot.at ""   # what an earlier supervisor did is history now
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
        refresh_passfile
        if ! pg_alive; then
            wait "$PG_PID" 2>/dev/null; rc=$?
            log "postgres exited (status $rc): booting again"
            PG_PID=""
            sleep 1
            break
        fi
        if [ -f "$ISOLATED_MARK" ] && ! isolated_here; then
            rm -f "$ISOLATED_MARK"   # pg_ops acted since (it promoted us, or chose another primary)
            report isolated.at ""
            if [ "$(primary_name)" != "$MEMBER" ] && [ -n "$(primary_name)" ]; then
                log "isolation over: the designated primary is now $(primary_name); rejoining as its replica"
                stop_postgres
                break
            fi
        fi
        if is_standby_dir; then
            if off_timeline_standby; then
                log "replica on timeline $(own_sql 3 "$STANDBY_TLI_SQL"), the primary $(primary_name) on $(primary_tli), and not streaming: booting again to rewind"
                stop_postgres
                break
            fi
            continue
        fi
        # Writable. Designated by the record, or by our own lease when the record file lags
        # behind (a kubelet's ConfigMap sync): epochs only grow, so the newer word wins.
        if [ "$(primary_name)" != "$MEMBER" ] && [ -n "$(primary_name)" ] && ! lease_is_newer; then
            if [ "${STALE_SEEN:-0}" = 0 ]; then
                STALE_SEEN=1   # once more before acting: pg_ops renews a new primary's lease right after promoting it
                continue
            fi
            log "writable but the designated primary is $(primary_name): stopping (fast) to rejoin as a replica"
            STALE_SEEN=0
            stop_postgres
            break
        fi
        STALE_SEEN=0
        if [ -f "$ISOLATED_MARK" ]; then
            log "writable again (promoted by pg_ops): isolation over"
            rm -f "$ISOLATED_MARK"; report isolated.at ""
        fi
        if ! isolation_check; then
            demote_isolated
            break
        fi
    done
done

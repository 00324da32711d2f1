#!/usr/bin/env bash
# pg_ops member supervisor: the data plane beside one PostgreSQL server.
#
# The same script runs on both platforms: the local platform starts it as the parent of a
# postgres process on a loopback port; the Kubernetes StatefulSet runs it as the container
# command of the official postgres image (which has bash and the PostgreSQL tools, but no
# Python - hence bash). It never decides topology: it reads the desired-state record that
# pg_ops writes (key=value lines; on Kubernetes a ConfigMap key mounted as a file) and makes
# this member match it. The boot table, first match wins; each line is one row of boot_row (its
# name first; its facts are listed beside the function) and, in brackets, the boot.action it
# reports (see below). A row that changes the data dir is followed by a new look at the table.
#   wait-record      no record yet                            -> wait, touch nothing      [wait]
#   wait-fenced      fenced by pg_ops at an epoch the record  -> wait, touch nothing      [wait]
#                    has not reached (Kubernetes: the failover's exec writes
#                    $STATE_DIR/pg_ops-fenced before it stops postgres; the record file here
#                    may lag behind by the kubelet's ConfigMap sync)
#   wipe-restore     a restore into the data dir was cut      -> wipe what it restored (it
#                    short                                       never served), look again
#   recover          empty data dir, designated primary,      -> restore the base backup and
#                    bootstrap=true, and the record names a      replay to the target with the
#                    recovery (`pg-ops recover`)                 recovery Secret's inputs
#                                                                (recover_pod.sh), once its token
#                                                                is mounted; never initdb [recover]
#                                                                (a failure is kept and refused
#                                                                again at every boot: [refused])
#   initdb           empty data dir, designated primary,      -> initdb                   [initdb]
#                    bootstrap=true
#   refuse-empty     empty data dir, designated primary,      -> refuse to start          [refused]
#                    bootstrapped                                (never initdb: a new empty
#                                                                cluster that reads as healthy
#                                                                is the worst outcome)
#   clone            empty data dir otherwise                 -> clone from the primary   [clone]
#                                                                (waits, touching nothing, while
#                                                                it is unreachable: [wait])
#   upgrade          an image with several majors             -> on the designated primary with
#                    (PGOPS_BINS), and the record names an       data of an older major: pg_upgrade
#                    upgrade (`pg-ops upgrade`) or one is        --link from this image's two
#                    under way (its mark)                        majors, then wait for pg_ops's go
#                                                                (the record's new system
#                                                                identifier) or its undo [upgrade]
#   refuse-sysid     system identifier differs from the       -> refuse to start, loudly  [refused]
#                    record
#   standby          not the designated primary, rewound or   -> start as a standby       [standby]
#                    re-cloned in this boot pass                 (its pass reports [rewind]/[reclone])
#   wait-primary     not the designated primary, no           -> wait, touch nothing      [wait]
#                    standby.signal, the primary unreachable
#   rewind           not the designated primary, no           -> count what it discards,
#                    standby.signal                              pg_rewind                [rewind]
#                                                                (fallback: re-clone, the data
#                                                                dir kept aside)          [reclone]
#   rewind-timeline  replica on another timeline than the     -> pg_rewind first, as above [rewind]
#                    primary
#   standby          replica                                  -> primary_conninfo/slot rewritten,
#                                                                start as a standby       [standby]
#   isolated         designated primary with standby.signal,  -> start as a standby      [isolated]
#                    isolated at the record's epoch
#   promote          designated primary with standby.signal   -> start, then promote      [promote]
#   primary          designated primary                       -> start                    [primary]
# Then it stays the parent of postgres and re-reads the record every second (demotion_rule, its
# own table): a member that is writable but not the designated primary stops itself (fast
# shutdown) and comes back as a replica. If postgres dies, the boot table runs again
# (recovered in place, as a kubelet would).
#
# Isolation fencing (the record's isolation.lease_seconds, 0 = off): the designated primary
# checks every second, through its own local port, when pg_ops last renewed its lease (a row
# in its pg_ops database) and whether a standby streams from it: it asks its own server's
# isolation_verdict() (pg_ops/postgres/isolation.py, installed by pg_ops). Neither for lease_seconds
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
# Environment (all required unless a default is shown), written once in Python for both
# platforms and the tests: pg_ops/render/member_env.py (MemberEnv):
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
LEASE_SEEN=false   # a lease row was read: from then on a missing row is no renewal
LAST_LEASE=0       # when the lease was last renewed for us (tenths of a second since the epoch)
LAST_STANDBY=0     # when a standby last replied to us (the same)

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
pg_ops_sql() {   # SQL [error file]: on this member's own server, database pg_ops (the lease), fields split by a space
    timeout 3 "${BIN}psql" -X -At -F ' ' -d "host=127.0.0.1 port=$PORT user=postgres dbname=pg_ops passfile=$PASSFILE connect_timeout=2" \
        -c "$1" 2>"${2:-/dev/null}"
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

# --- the boot table (header): facts in, row out --------------------------------------------
# boot_row is pure (no I/O, no globals): the header's table as one function, tested row by row
# by sourcing this script (pg_ops_tests/test_member_script.py). Its facts, each yes|no unless shown:
#   record        the record is readable and names a primary
#   fenced        pg_ops fenced this member at an epoch the record has not reached
#   restore_cut   a recovery into this data dir was cut short (its mark is still there)
#   data          the data dir holds a cluster (PG_VERSION)
#   designated    the record names this member as the primary
#   bootstrap     the record says bootstrap=true
#   recovery      the record names a recovery
#   upgrade       an image with several majors, and an upgrade mark or the record's upgrade.id,
#                 not yet looked at in this boot pass
#   sysid         match|differs: the data dir's system identifier against the record's (match
#                 when the record names none)
#   standby       standby.signal is in the data dir
#   rewound       this boot pass rewound or re-cloned the data dir already
#   reachable     the designated primary answers (asked only for a rewind)
#   timeline      same|differs|unknown: this replica's timeline against the primary's
#   isolated      fenced itself as isolated at the record's current epoch
# Rows that act on the data dir (wipe-restore, recover, initdb, clone, upgrade, rewind*) are
# followed by a new look at the facts; the others end the pass (start postgres, wait, refuse).
boot_row() {
    local record=no fenced=no restore_cut=no data=no designated=no bootstrap=no recovery=no upgrade=no
    local sysid=match standby=no rewound=no reachable=no timeline=unknown isolated=no fact
    for fact in "$@"; do
        case $fact in
            record=*|fenced=*|restore_cut=*|data=*|designated=*|bootstrap=*|recovery=*|upgrade=*|sysid=*|\
            standby=*|rewound=*|reachable=*|timeline=*|isolated=*) local "$fact" ;;
            *) echo "boot_row: unknown fact $fact" >&2; return 2 ;;
        esac
    done
    if [ "$record" != yes ]; then echo wait-record
    elif [ "$fenced" = yes ]; then echo wait-fenced
    elif [ "$restore_cut" = yes ]; then echo wipe-restore
    elif [ "$data" != yes ]; then
        if [ "$designated" = yes ] && [ "$bootstrap" = yes ] && [ "$recovery" = yes ]; then echo recover
        elif [ "$designated" = yes ] && [ "$bootstrap" = yes ]; then echo initdb
        elif [ "$designated" = yes ]; then echo refuse-empty   # never initdb a bootstrapped cluster
        else echo clone
        fi
    elif [ "$upgrade" = yes ]; then echo upgrade
    elif [ "$sysid" != match ]; then echo refuse-sysid
    elif [ "$designated" != yes ]; then
        if [ "$rewound" = yes ]; then echo standby
        elif [ "$standby" != yes ] && [ "$reachable" != yes ]; then echo wait-primary
        elif [ "$standby" != yes ]; then echo rewind
        elif [ "$timeline" = differs ]; then echo rewind-timeline
        else echo standby
        fi
    elif [ "$standby" = yes ] && [ "$isolated" = yes ]; then echo isolated
    elif [ "$standby" = yes ]; then echo promote
    else echo primary
    fi
}

# The facts boot_row decides on, into BOOT_FACTS. A fact that costs a tool or a connection
# (pg_controldata, the primary's psql) is read only where the table looks at it, in its order,
# so a designated primary never connects to anyone and a refused data dir is never rewound.
# Side effects: BIN becomes the data dir's major's (use_data_major, which refuses data of a
# major the image lacks); BOOT_SYSID/BOOT_WANT_SYSID for a refusal's message.
BOOT_FACTS=()
BOOT_SYSID="" BOOT_WANT_SYSID="" BOOT_TLI=""
boot_facts() {   # upgrade_seen rewound: what this boot pass did already
    local designated=no data=no standby=no mine theirs
    BOOT_FACTS=()
    if ! [ -r "$STATE" ] || [ -z "$(primary_name)" ]; then BOOT_FACTS=(record=no); return 0; fi
    if fenced_ahead; then BOOT_FACTS=(record=yes fenced=yes); return 0; fi
    use_data_major   # new data (initdb, clone, recovery) is the image's own major
    if [ -f "$RECOVERING_MARK" ]; then BOOT_FACTS=(record=yes restore_cut=yes); return 0; fi
    [ "$(primary_name)" = "$MEMBER" ] && designated=yes
    has_data && data=yes
    is_standby_dir && standby=yes
    BOOT_FACTS=(record=yes designated=$designated data=$data standby=$standby rewound=$2)
    BOOT_FACTS+=(bootstrap=$([ "$(sget bootstrap)" = true ] && echo yes || echo no))
    BOOT_FACTS+=(recovery=$([ -n "$(sget recovery)" ] && echo yes || echo no))
    [ "$data" = yes ] || return 0
    if [ "$1" = no ] && [ -n "$BINS" ] && { [ -f "$UPGRADE_MARK" ] || [ -n "$(sget upgrade.id)" ]; }; then
        BOOT_FACTS+=(upgrade=yes); return 0
    fi
    [ "$2" = yes ] && { BOOT_FACTS+=(isolated=$(isolated_here && echo yes || echo no)); return 0; }
    BOOT_WANT_SYSID=$(wanted_sysid); BOOT_SYSID=$(local_sysid)
    if [ -n "$BOOT_WANT_SYSID" ] && [ "$BOOT_SYSID" != "$BOOT_WANT_SYSID" ]; then BOOT_FACTS+=(sysid=differs); return 0; fi
    if [ "$designated" = yes ]; then
        [ "$standby" = yes ] && BOOT_FACTS+=(isolated=$(isolated_here && echo yes || echo no))
    elif [ "$standby" = no ]; then
        BOOT_FACTS+=(reachable=$(primary_reachable && echo yes || echo no))
    else
        mine=$(local_tli); theirs=$(primary_tli)
        if [ -n "$theirs" ] && [ -n "$mine" ] && [ "$mine" != "$theirs" ]; then BOOT_FACTS+=(timeline=differs)
        else BOOT_FACTS+=(timeline=same); fi
        BOOT_TLI="$mine $theirs"
    fi
    return 0
}

# The identifier the data dir must have: the record's, or the upgrade's go that pg_ops wrote
# beside the data, which names the new identifier while this pod's record file still says the
# upgrade and the old one (the kubelet's sync lags). A go of another upgrade is stale: removed.
wanted_sysid() {
    local want go_id="" go_sysid=""
    want=$(sget system_identifier)
    if [ -f "$UPGRADE_GO" ]; then
        read -r go_id go_sysid 2>/dev/null < "$UPGRADE_GO"
        if [ -n "$go_id" ] && [ "$(sget upgrade.id)" = "$go_id" ]; then want=$go_sysid; else rm -f "$UPGRADE_GO"; fi
    fi
    printf '%s\n' "$want"
}

BOOT_ROW=""   # the row that ended the last boot pass: how start_postgres starts postgres
boot() {   # one pass of the boot table: 0 with BOOT_ROW set to start postgres, 1 to boot again later
    PASS_ACTION="" BOOT_ROW=""
    local row upgrade_seen=no rewound=no why
    while [ "$STOPPING" = 0 ]; do
        boot_facts "$upgrade_seen" "$rewound"
        row=$(boot_row "${BOOT_FACTS[@]}") || { log "boot table: no row for ${BOOT_FACTS[*]}"; return 1; }
        case $row in wait-record|wait-fenced) ;; *) rm -f "$FENCED_MARK" ;; esac   # the record decides from here
        case $row in
            wait-record) wait_for_state ;;
            wait-fenced)
                why="fenced by pg_ops at epoch $(sed -n 's/^epoch=//p' "$FENCED_MARK"); the record here is at epoch $(sget epoch)"
                set_phase waiting "$why"; boot_action wait "$why"
                log "$why: waiting for the record to catch up"
                return 1 ;;
            wipe-restore)
                log "a recovery into this data dir was cut short: wiping what it restored (it never served)"
                wipe_data
                rm -f "$RECOVERING_MARK" ;;
            recover) run_recovery "$(sget recovery)" || return 1 ;;
            initdb) run_initdb ;;
            refuse-empty) die "designated primary but the data dir is empty and the cluster is bootstrapped; refusing initdb (fail over to a replica)" ;;
            clone) clone_from_primary || return 1 ;;
            upgrade) upgrade_seen=yes; run_upgrade "$(sget upgrade.id)" "$(sget upgrade.to)" || return 1 ;;
            refuse-sysid) die "data dir $DATA belongs to another cluster (system identifier $BOOT_SYSID, expected $BOOT_WANT_SYSID); refusing to start" ;;
            wait-primary)
                why="primary $(primary_name) unreachable: cannot rewind"
                set_phase waiting "$why"; boot_action wait "$why"
                log "not the designated primary and $(primary_name) is unreachable: waiting"
                return 1 ;;
            rewind|rewind-timeline)
                if [ "$row" = rewind ]; then
                    log "not the designated primary ($(primary_name)) but the data dir is not a standby: rewinding"
                else
                    log "replica on timeline ${BOOT_TLI% *}, primary on ${BOOT_TLI#* }: checking for divergence"
                fi
                rewind_from_primary || reclone_diverged || return 1
                write_standby_config
                rewound=yes ;;
            standby) write_standby_config; BOOT_ROW=$row; return 0 ;;
            isolated|promote|primary) BOOT_ROW=$row; return 0 ;;
            *) log "boot table: unknown row $row"; return 1 ;;
        esac
    done
    return 1
}

start_postgres() {
    local args=(-D "$DATA" -p "$PORT"
        -c "config_file=$CONFIG_DIR/postgresql.conf" -c "hba_file=$CONFIG_DIR/pg_hba.conf"
        -c "ident_file=$CONFIG_DIR/pg_ident.conf"
        -c "listen_addresses=$LISTEN" -c "cluster_name=$MEMBER"
        -c "unix_socket_directories=$SOCKET_DIR")
    local row=$BOOT_ROW detail=""
    case $row in
        isolated) detail="isolated at epoch $(sget epoch): a standby until pg_ops promotes it" ;;
        standby) detail="from $(primary_name)" ;;
    esac
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

# The isolation verdict is the server's: isolation_verdict() in this member's own pg_ops
# database (pg_ops/postgres/isolation.py, installed by every deploy; physical replication
# carries it to every member), asked through the local port, so a member cut off from
# everyone still gets an answer. The script only asks and acts. It keeps the rule's memory
# between seconds and hands it back with each question: when the lease was last renewed for
# this member, when a standby last replied (tenths of a second since the epoch, both set to now
# when this postgres is first seen writable), whether a lease row was ever seen. The bound is
# counted from those moments, as the server measures them, so a cut-off primary stops
# lease_seconds (plus one check and its shutdown) after pg_ops last reached it — the wait a
# failover that cannot confirm the fence allows for (operations/failover.py: LEASE_MARGIN_S).
# Only the cluster's own members count as standbys (their WAL receivers connect with
# application_name = member name): a CDC consumer, pg_receivewal or a clone's pg_basebackup that
# still reaches a cut-off primary must not keep it writable.
verdict_sql() {   # lease_seconds record_ok: the question, with the other members' names and the memory
    local line name names=""
    while IFS= read -r line || [ -n "$line" ]; do   # the other members' names, quoted, comma-separated
        case $line in member.*=*) name=${line%%=*}; name=${name#member.} ;; *) continue ;; esac
        [[ $name =~ ^[a-z0-9-]+$ ]] && [ "$name" != "$MEMBER" ] && names="${names:+$names,}'$name'"
    done 2>/dev/null < "$STATE"
    echo "select public.isolation_verdict($1, '${MEMBER//\'/\'\'}', array[$names]::text[], $LAST_LEASE, $LAST_STANDBY, ${LEASE_SEEN:-false}, $2)"
}

now_tenths() { local us=${EPOCHREALTIME/[.,]/}; echo $((us / 100000)); }   # no date(1) fork

# Its own server not answering (down, hung past the 3 s bound, or a pg_ops database without the
# function: a cluster deployed by an older pg_ops until its next deploy) is no sign of life from
# pg_ops or a standby: the memory stays where it was and the same bound applies (fail closed).
# The server's rule for a question it cannot answer: nothing renewed, nothing replied.
unanswered_past_lease() {   # lease: 0 while within the bound, else ISOLATION_REASON set
    local now; now=$(now_tenths)
    if [ $((now - LAST_LEASE)) -gt $(($1 * 10)) ] && [ $((now - LAST_STANDBY)) -gt $(($1 * 10)) ]; then
        ISOLATION_REASON="no lease renewal for $(((now - LAST_LEASE) / 10)) s and no standby for $(((now - LAST_STANDBY) / 10)) s (lease $1 s; its own server did not answer)"
        return 1
    fi
    return 0
}

VERDICT_MISSING_LOGGED=""
isolation_check() {   # returns 1 when this primary is cut off from pg_ops and every standby
    local lease out verdict lease_at standby_at seen reason record_ok=true
    lease=$(lease_seconds)
    if [ -z "$(primary_name)" ]; then
        record_ok=false   # unreadable or empty record: the lease counts as stale
        lease=${LAST_LEASE_SECONDS:-0}
    else
        LAST_LEASE_SECONDS=$lease
    fi
    [ -n "$lease" ] && [ "$lease" -gt 0 ] 2>/dev/null || return 0
    [ "$WRITABLE_SINCE" -gt 0 ] || { WRITABLE_SINCE=$EPOCHSECONDS; LAST_LEASE=$(now_tenths); LAST_STANDBY=$LAST_LEASE; }
    out=$(pg_ops_sql "$(verdict_sql "$lease" "$record_ok")" "$RUN_DIR/verdict.err") || out=""
    read -r verdict lease_at standby_at seen reason <<< "$out"
    if [[ $verdict =~ ^(ok|isolated)$ && $lease_at =~ ^[0-9]+$ && $standby_at =~ ^[0-9]+$ && $seen =~ ^(true|false)$ ]]; then
        LAST_LEASE=$lease_at LAST_STANDBY=$standby_at LEASE_SEEN=$seen
        [ "$verdict" = ok ] && return 0
        ISOLATION_REASON=$reason
        return 1
    fi
    if [ -z "$VERDICT_MISSING_LOGGED" ] && grep -q "isolation_verdict.*does not exist" "$RUN_DIR/verdict.err" 2>/dev/null; then
        VERDICT_MISSING_LOGGED=1
        log "the pg_ops database has no isolation_verdict() (deployed by an older pg_ops?): no answer counts as no renewal until pg_ops deploys it"
    fi
    unanswered_past_lease "$lease"
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

# --- the supervision loop's rules: facts in, rule out -------------------------------------
# demotion_rule is pure, like boot_row: what the loop does this second, first match wins:
#   postgres exited                                         -> boot again in place      reboot
#   isolated at an older epoch, another primary designated  -> stop, rejoin it          rejoin
#   standby, three looks behind the primary's timeline      -> stop, boot to rewind     rewind
#   standby                                                 -> nothing                  standby
#   writable, another primary designated, our own lease not
#   newer (the record file may lag): the first look         -> look again next second   look-again
#                                    the second look        -> stop (fast), rejoin      demote
#   writable, designated: the isolation verdict "isolated"  -> restart as a standby     isolate
#   writable, designated                                    -> nothing                  primary
# Facts: alive, standby, off_timeline, lease_newer, stale_seen (yes|no), designated (me|other|
# none), mark (none|current|old: the isolation marker's epoch against the record's), lease
# (ok|isolated: isolation_check's verdict).
demotion_rule() {
    local alive=yes mark=none designated=me standby=no off_timeline=no lease_newer=no stale_seen=no lease=ok fact
    for fact in "$@"; do
        case $fact in
            alive=*|mark=*|designated=*|standby=*|off_timeline=*|lease_newer=*|stale_seen=*|lease=*) local "$fact" ;;
            *) echo "demotion_rule: unknown fact $fact" >&2; return 2 ;;
        esac
    done
    if [ "$alive" != yes ]; then echo reboot
    elif [ "$mark" = old ] && [ "$designated" = other ]; then echo rejoin
    elif [ "$standby" = yes ] && [ "$off_timeline" = yes ]; then echo rewind
    elif [ "$standby" = yes ]; then echo standby
    elif [ "$designated" = other ] && [ "$lease_newer" != yes ] && [ "$stale_seen" != yes ]; then echo look-again
    elif [ "$designated" = other ] && [ "$lease_newer" != yes ]; then echo demote
    elif [ "$lease" = isolated ]; then echo isolate
    else echo primary
    fi
}

# The loop's facts, into TICK_FACTS; each psql only where the rule looks at it (the standby's
# timeline look, our own lease, the isolation check). The timeline look and the isolation check
# keep memory across seconds: they run in this shell, never in a $( ) subshell.
TICK_FACTS=()
tick_facts() {
    local designated=none standby=no mark=none stale_seen=no primary   # no fork that is not needed: every second
    TICK_FACTS=()
    if ! pg_alive; then TICK_FACTS=(alive=no); return 0; fi
    primary=$(primary_name)
    if [ "$primary" = "$MEMBER" ]; then designated=me; elif [ -n "$primary" ]; then designated=other; fi
    if [ -f "$ISOLATED_MARK" ]; then if isolated_here; then mark=current; else mark=old; fi; fi
    is_standby_dir && standby=yes
    [ "${STALE_SEEN:-0}" = 1 ] && stale_seen=yes
    TICK_FACTS=(alive=yes designated=$designated standby=$standby mark=$mark stale_seen=$stale_seen)
    [ "$mark" = old ] && [ "$designated" = other ] && return 0
    if [ "$standby" = yes ]; then
        if off_timeline_standby; then TICK_FACTS+=(off_timeline=yes); else TICK_FACTS+=(off_timeline=no); fi   # it counts looks: not in a subshell
        return 0
    fi
    if [ "$designated" = other ]; then
        lease_is_newer || { TICK_FACTS+=(lease_newer=no); return 0; }
        TICK_FACTS+=(lease_newer=yes)
    fi
    if isolation_check; then TICK_FACTS+=(lease=ok); else TICK_FACTS+=(lease=isolated); fi
}

clear_isolation_mark() { rm -f "$ISOLATED_MARK"; report isolated.at ""; }

main() {
    trap on_term TERM
    trap on_int INT
    prepare_private_files
    take_data_lock
    report boot.action "" boot.reason "" boot.at ""   # what an earlier supervisor did is history now
    log "supervisor started (pid $$)"
    local rule rc
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
            tick_facts
            rule=$(demotion_rule "${TICK_FACTS[@]}") || { log "supervision: no rule for ${TICK_FACTS[*]}"; continue; }
            case " ${TICK_FACTS[*]} " in
                *" mark=old "*) clear_isolation_mark ;;   # pg_ops acted since (it promoted us, or chose another primary)
                *" mark=current "*) case $rule in primary|isolate)   # writable again: pg_ops promoted us
                    log "writable again (promoted by pg_ops): isolation over"; clear_isolation_mark ;; esac ;;
            esac
            case $rule in look-again) STALE_SEEN=1 ;; demote|primary|isolate) STALE_SEEN=0 ;; esac
            case $rule in
                reboot)
                    wait "$PG_PID" 2>/dev/null; rc=$?
                    log "postgres exited (status $rc): booting again"
                    PG_PID=""
                    sleep 1
                    break ;;
                rejoin)
                    log "isolation over: the designated primary is now $(primary_name); rejoining as its replica"
                    stop_postgres
                    break ;;
                rewind)
                    log "replica on timeline $(own_sql 3 "$STANDBY_TLI_SQL"), the primary $(primary_name) on $(primary_tli), and not streaming: booting again to rewind"
                    stop_postgres
                    break ;;
                demote)
                    log "writable but the designated primary is $(primary_name): stopping (fast) to rejoin as a replica"
                    stop_postgres
                    break ;;
                isolate)
                    demote_isolated
                    break ;;
                standby|look-again|primary) ;;
            esac
        done
    done
}

# Sourced (the tests call boot_row and demotion_rule), it defines its functions and runs nothing:
# `return` succeeds only in a sourced file.
if ! (return 0 2>/dev/null); then main "$@"; fi

#!/usr/bin/env bash
# pg_ops WAL archive for file stores: PostgreSQL's archive_command and restore_command.
#   wal_file.sh archive DIR %p %f     copy a finished segment into DIR/<sysid>/wals/, fsynced, atomically
#   wal_file.sh restore DIR %f %p     copy it back during recovery (DIR: one incarnation's folder)
# The layout is barman-cloud's (what S3 stores hold), so pg_ops lists both the same way:
# DIR/<sysid>/wals/<first 16 hex digits>/<segment>, history files in .../wals/ itself. <sysid>
# is the archiving server's system identifier, read from global/pg_control (archive_command
# runs in the data dir): a cluster made again under the same name archives beside the old
# one, never into it. It runs as the server user; DIR belongs to it. An existing file with the
# same content is success (the archiver retries a segment whose success it did not record);
# different content is an error.
set -u
mode=${1:?mode}; dir=${2:?archive folder}

sub_of() { case "$1" in *.history) echo "" ;; *) echo "${1:0:16}/" ;; esac; }

case "$mode" in
archive)
    src=${3:?%p}; name=${4:?%f}; sub=$(sub_of "$name")
    sysid=$(od -An -tu8 -N8 global/pg_control 2>/dev/null | tr -d ' ')
    if [ -z "$sysid" ]; then
        echo "wal_file: cannot read the system identifier from $PWD/global/pg_control" >&2; exit 1
    fi
    dir="$dir/$sysid"; dst="$dir/wals/$sub$name"
    if [ -f "$dst" ]; then
        cmp -s "$src" "$dst" && exit 0
        echo "wal_file: $dst exists with other content; refusing to overwrite" >&2; exit 1
    fi
    mkdir -p "$dir/wals/$sub" || exit 1
    tmp="$dir/wals/$sub.$name.tmp.$$"
    if cp "$src" "$tmp" && sync "$tmp" && mv "$tmp" "$dst" && sync "$dir/wals/$sub"; then exit 0; fi
    rm -f "$tmp"; exit 1 ;;
restore)
    name=${3:?%f}; dst=${4:?%p}; src="$dir/wals/$(sub_of "$name")$name"
    [ -f "$src" ] || exit 1   # not archived: recovery asks for files that do not exist, by design
    exec cp "$src" "$dst" ;;
*)
    echo "wal_file: unknown mode $mode" >&2; exit 2 ;;
esac

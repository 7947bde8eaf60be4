#!/bin/sh
# etcdops-textfile: export `etcdops health --cluster` for node_exporter's textfile collector.
#
# Writes $ETCDOPS_TEXTFILE_DIR/etcd.prom atomically: first to etcd.prom.<pid> beside it (the
# collector reads only *.prom files, and a rename within one directory is atomic), then mv.
#
# An unhealthy (exit 4) or unreachable (exit 3) cluster is still written: those metrics are
# what the alerts fire on. Only a run that printed no metrics (exit 2: bad flag, unreadable
# manifest; or a crash) leaves the previous file in place and fails the unit, so that
# etcdops_health_last_check_timestamp_seconds goes stale and `systemctl --failed` shows it.
#
# Extra arguments are passed to `etcdops health`, e.g. --quota-backend-bytes=8589934592.
set -u

dir=${ETCDOPS_TEXTFILE_DIR:-/var/lib/node_exporter/textfile_collector}
etcdops=${ETCDOPS_BIN:-etcdops}
out="$dir/etcd.prom"
tmp="$out.$$"

trap 'rm -f "$tmp"' EXIT
trap 'exit 143' TERM
trap 'exit 130' INT

"$etcdops" health --cluster -o prometheus "$@" >"$tmp"
rc=$?
case "$rc" in
  0 | 3 | 4) ;;
  *)
    echo "etcdops-textfile: etcdops health exited $rc; $out not updated" >&2
    exit "$rc"
    ;;
esac
if [ ! -s "$tmp" ]; then
  echo "etcdops-textfile: etcdops health printed no metrics; $out not updated" >&2
  exit 1
fi
chmod 0644 "$tmp" && mv -f "$tmp" "$out" || exit 1

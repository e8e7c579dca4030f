#!/usr/bin/env bash
# tests/testbed/down.sh -- stop the daemons that tests/testbed/up.sh started, by the pid files
# it keeps in /run/vmpilot-testbed/ (never by process name), and remove node n2's network
# namespace.  Idempotent: a missing or stale
# pid file is skipped.  Daemons that up.sh found already running (started by someone else) have
# no pid file there and are left alone.  Packages, configs, Slurm state and the guest cache stay
# (up.sh then brings everything back in seconds).
#
# Running libvirt domains are NOT destroyed by default (their qemu processes outlive libvirtd);
# TESTBED_DESTROY_DOMAINS=1 destroys the running domains whose name starts with
# ${TESTBED_DOMAIN_PREFIX:-vmpilot} before libvirtd is stopped.
set -euo pipefail
[ "$(id -u)" = 0 ] || { echo "down.sh: must run as root" >&2; exit 2; }
RUN=/run/vmpilot-testbed
: "${TESTBED_DESTROY_DOMAINS:=0}" "${TESTBED_DOMAIN_PREFIX:=vmpilot}"

log() { echo "[testbed-down $(date +%T)] $*" >&2; }
# alive PID: the process exists and is not a zombie (daemons are re-parented to PID 1, which
# may reap them late)
alive() { local st; st=$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null) && [ -n "$st" ] && [ "$st" != Z ]; }
# stop_pid PIDFILE COMM: SIGTERM exactly that pid if it is a live COMM, wait <= 15 s, SIGKILL
stop_pid() {
  local pf=$1 comm=$2 pid i
  if [ ! -s "$pf" ]; then log "$comm: no pid file, not started by up.sh"; return 0; fi
  pid=$(tr -dc 0-9 <"$pf")
  if [ -z "$pid" ] || [ "$(cat "/proc/$pid/comm" 2>/dev/null)" != "$comm" ]; then
    log "$comm: not running (stale pid file)"; rm -f "$pf"; return 0
  fi
  log "stopping $comm (pid $pid)"
  kill -TERM "$pid" 2>/dev/null || true
  for i in $(seq 150); do alive "$pid" || break; sleep 0.1; done
  if alive "$pid"; then log "$comm did not exit in 15 s: SIGKILL"; kill -KILL "$pid" 2>/dev/null || true; fi
  rm -f "$pf"
}

if [ "$TESTBED_DESTROY_DOMAINS" = 1 ] && [ -S /run/libvirt/libvirt-sock ]; then
  for d in $(timeout 30 virsh -q -c qemu:///system list --name 2>/dev/null || true); do
    case "$d" in "$TESTBED_DOMAIN_PREFIX"*) log "destroying domain $d"; timeout 30 virsh -q -c qemu:///system destroy "$d" >/dev/null 2>&1 || true ;; esac
  done
elif [ -S /run/libvirt/libvirt-sock ]; then
  left=$(timeout 30 virsh -q -c qemu:///system list --name 2>/dev/null | grep -c . || true)
  [ "${left:-0}" -gt 0 ] && log "note: $left libvirt domain(s) still running; their qemu processes stay"
fi

stop_pid "$RUN/n2/slurmd.pid" slurmd
stop_pid "$RUN/slurmd.pid" slurmd
stop_pid "$RUN/slurmctld.pid" slurmctld
stop_pid "$RUN/libvirtd.pid" libvirtd
stop_pid "$RUN/virtlogd.pid" virtlogd
stop_pid "$RUN/munge/munged.pid" munged
# node n2's network (up.sh creates it again); its slurmd is stopped above
if [ -e /run/netns/vmpilot-n2 ]; then
  log "removing network namespace vmpilot-n2"
  ip link del vmp-n2h 2>/dev/null || true
  ip netns del vmpilot-n2 2>/dev/null || true
fi
log "done"

#!/bin/bash
# vmpilot Slurm Epilog: finish the leases of the job that just ended, so that a pilot that was
# SIGKILLed (KillWait expired, OOM, crash) never hands a node in VM-hosting mode to the next
# batch job.
#
# Install (on every node that may run pilots; as root):
#   install -o root -g root -m 0755 epilog.sh /etc/slurm/vmpilot-epilog.sh
#   slurm.conf:  Epilog=/etc/slurm/vmpilot-epilog.sh          (then `scontrol reconfigure`)
#                PrologEpilogTimeout=180                       (> VMPILOT_EPILOG_TIMEOUT)
# If the site already has an Epilog, call this script from it and propagate its exit status.
#
# slurmd runs the Epilog as root on the node after EVERY job (completed, cancelled,
# preempted, timed out, failed), and keeps the node in COMPLETING until it returns: the next
# job cannot start on a node that is still being restored.  A NON-ZERO EXIT DRAINS THE NODE
# (Reason="Epilog error"), which is what we want when recovery fails: a node whose state is
# unknown must not take batch work.  The admin looks (`vmpilot status`, the logs), fixes,
# runs `vmpilot recover` and `scontrol update NodeName=N State=RESUME`.
#
# Decisions (safest choice first):
#   - recovery failed (vmpilot recover exit 4), timed out, or vmpilot could not run
#     (config/environment error 2/3, binary missing on a configured node) -> exit 1: drain;
#   - nothing to do (no lease of this job: every non-pilot job) -> exit 0, in milliseconds;
#   - neither the vmpilot binary nor its config file exists -> exit 0: not a vmpilot node,
#     so one slurm.conf can carry this Epilog cluster-wide;
#   - the binary is missing but the config exists -> exit 1: this node is meant to host VMs
#     and nobody can tell whether it was restored;
#   - it runs for every job, not only jobs with the comment vmpilot-pilot: the comment is
#     set by the user, a lease found by job id is the ground truth, and recover is cheap.
#
# Environment (from slurmd's environment, not the job's):
#   VMPILOT_BIN              vmpilot binary (default: vmpilot, searched in PATH below)
#   VMPILOT_CONFIG           config file (default /etc/vmpilot/vmpilot.toml)
#   VMPILOT_STATE_DIR        state directory override (read by vmpilot itself)
#   VMPILOT_EPILOG_TIMEOUT   seconds before recovery is abandoned and the node drained
#                            (default 150: stopping guests takes up to [lease] grace + destroy;
#                            keep it below slurm.conf PrologEpilogTimeout)
# Logs: syslog (tag vmpilot-epilog) and stderr; slurmd does not keep Epilog output, so
# syslog (or `vmpilot status` / {state_dir}/vmpilot.log) is where to look.

# slurmd gives the Epilog NO PATH at all (measured, Slurm 22.05).
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export VMPILOT_CONFIG=${VMPILOT_CONFIG:-/etc/vmpilot/vmpilot.toml}
bin=${VMPILOT_BIN:-vmpilot}
limit=${VMPILOT_EPILOG_TIMEOUT:-150}
job=${SLURM_JOB_ID:-}

log() {
  echo "vmpilot-epilog: job ${job:-?}: $*" >&2
  logger -t vmpilot-epilog -- "job ${job:-?}: $*" 2>/dev/null || true
}

case $job in
  '' | *[!0-9_]*) log "SLURM_JOB_ID '${job}' missing or not a job id; draining to be safe"; exit 1 ;;
esac
case $limit in
  '' | *[!0-9]* | 0) limit=150 ;;
esac

if ! command -v "$bin" >/dev/null 2>&1; then
  if [ -e "$VMPILOT_CONFIG" ]; then
    log "vmpilot binary '$bin' not found but $VMPILOT_CONFIG exists: cannot check this node; draining"
    exit 1
  fi
  exit 0 # not a vmpilot node
fi

# Bounded: a hung hypervisor must not keep the node COMPLETING forever.  --kill-after: a
# recover that ignores SIGTERM is SIGKILLed 10 s later (its records stay; the next recover,
# or `vmpilot recover --boot`, finishes the job).
out=$(timeout --kill-after=10 "$limit" "$bin" recover --job "$job" 2>&1)
rc=$?
# keep the log readable: at most 40 lines of vmpilot's own output
[ -n "$out" ] && printf '%s\n' "$out" | head -n 40 | while IFS= read -r line; do log "$line"; done

case $rc in
  0) exit 0 ;;
  4) log "recover: a lease could NOT be restored (exit 4); draining the node" ;;
  124 | 137) log "recover did not finish within ${limit}s; draining the node" ;;
  2 | 3) log "recover could not run (exit $rc: config or environment; see above); draining the node" ;;
  126 | 127) log "cannot execute '$bin' (exit $rc); draining the node" ;;
  *) log "recover failed (exit $rc); draining the node" ;;
esac
exit 1

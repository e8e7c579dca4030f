#!/bin/bash
# vmpilot test bed: Slurm Epilog wrapper, installed by tests/testbed/up.sh as
# /etc/vmpilot-testbed/epilog.sh (slurm.conf: Epilog=/etc/vmpilot-testbed/epilog.sh).
#
# slurmd runs it as root on the node when a job ends (any end: completed, cancelled,
# preempted, timeout), with SLURM_JOB_ID, SLURM_JOB_USER, SLURM_JOB_PARTITION... set.
# It runs every executable file in /etc/vmpilot-testbed/epilog.d/ in name order (a single
# hook is exec'd), so tests drop their real epilog there, e.g.
#   /etc/vmpilot-testbed/epilog.d/50-vmpilot:
#     #!/bin/sh
#     exec /path/to/vmpilot recover --job "$SLURM_JOB_ID" --config /path/to/config.toml
# Exit status: 0 when there is no hook; otherwise the first non-zero hook status.
# A NON-ZERO EPILOG STATUS MAKES SLURM DRAIN THE NODE (up.sh resumes a drained node).
# Every run is logged to /run/vmpilot-testbed/epilog.log (one line per job).
# MEASURED (22.05.8): slurmd gives the Epilog NO PATH and no SLURM_JOB_NAME; it does give
# SLURM_JOB_ID, SLURM_JOB_USER, SLURM_JOB_UID, SLURM_JOB_PARTITION, SLURM_JOB_COMMENT,
# SLURM_JOB_EXIT_CODE, SLURM_JOB_WORK_DIR, SLURMD_NODENAME, SLURM_SCRIPT_CONTEXT=epilog_slurmd.
# This wrapper sets a default PATH for the hooks.
export PATH=${PATH:-/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin}
D=/etc/vmpilot-testbed/epilog.d
LOG=/run/vmpilot-testbed/epilog.log

# clean up the simulated PBS node file written by task-prolog.sh
rm -f "/tmp/vmpilot-testbed-pbs-nodefile.${SLURM_JOB_ID:-none}" 2>/dev/null

hooks=()
for f in "$D"/*; do
  [ -f "$f" ] && [ -x "$f" ] && hooks+=("$f")
done
echo "$(date +%FT%T.%N) epilog job=${SLURM_JOB_ID:-?} hooks=${#hooks[@]}" >>"$LOG" 2>/dev/null
[ ${#hooks[@]} -eq 0 ] && exit 0
[ ${#hooks[@]} -eq 1 ] && exec "${hooks[0]}" "$@"
rc=0
for h in "${hooks[@]}"; do
  "$h" "$@"; r=$?
  [ $rc -eq 0 ] && rc=$r
done
exit $rc

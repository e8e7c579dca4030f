#!/bin/bash
# vmpilot test bed: Slurm TaskProlog -- a PBS *SIMULATION*, not PBS.
# Installed by tests/testbed/up.sh as /etc/vmpilot-testbed/task-prolog.sh
# (slurm.conf: TaskProlog=/etc/vmpilot-testbed/task-prolog.sh).
#
# No real PBS/Torque server can be installed on the test machines.  Debian's
# slurm-wlm-torque gives qsub/qdel/qstat wrappers over Slurm, but jobs submitted through them
# get no PBS_* variables.  This TaskProlog fakes the variables a Torque/OpenPBS job would see,
# so the pilot's PBS code path can run on top of Slurm.  It does so ONLY for jobs that ask for
# the simulation: job name starting with "pbs-" (qsub -N pbs-..., #PBS -N pbs-...,
# sbatch -J pbs-...) or a job comment containing "pbs-sim".  Every other job keeps a pure
# Slurm environment.  VMPILOT_TESTBED_PBS_SIMULATION=1 marks a simulated environment.
#
# Slurm runs the TaskProlog as the job user before each task; every stdout line
# "export NAME=VALUE" is added to that task's environment.
# MEASURED (Slurm 22.05.8, proctrack/cgroup, this test bed): the exports DO reach the batch
# script itself (sbatch -J pbs-x, sbatch --comment=pbs-sim, qsub with #PBS -N pbs-...), not only
# srun steps; srun steps inside such a job see them too (inherited + this prolog runs again per
# task).  A job named otherwise sees no PBS_* variable in the batch shell or its steps.
# Differences from real PBS: PBS_JOBID is "<slurm id>.testbed" while qsub prints the bare id;
# PBS_WALLTIME is absent for an UNLIMITED time limit; qstat -f output is Slurm's wrapper's.

want=0
case "${SLURM_JOB_NAME:-}" in pbs-*) want=1 ;; esac
if [ $want = 0 ] && [ -n "${SLURM_JOB_ID:-}" ]; then
  comment=$(squeue -h -j "$SLURM_JOB_ID" -o %k 2>/dev/null || true)
  case "$comment" in *pbs-sim*) want=1 ;; esac
fi
[ $want = 1 ] || exit 0

# Slurm time limit (%l: UNLIMITED | MM:SS | HH:MM:SS | D-HH:MM:SS) -> seconds
to_secs() {
  local s=$1 d=0 a b c
  case "$s" in ''|UNLIMITED|INVALID|NOT_SET|*[!0-9:-]*) return 1 ;; esac
  if [[ $s == *-* ]]; then d=${s%%-*}; s=${s#*-}; fi
  IFS=: read -r a b c <<<"$s"
  if [ -n "$c" ]; then echo $(( 10#$d*86400 + 10#$a*3600 + 10#$b*60 + 10#$c ))
  elif [ -n "$b" ]; then
    if [ "$d" != 0 ]; then echo $(( 10#$d*86400 + 10#$a*3600 + 10#$b*60 ))   # D-HH:MM
    else echo $(( 10#$a*60 + 10#$b )); fi                                  # MM:SS
  else
    if [ "$d" != 0 ]; then echo $(( 10#$d*86400 + 10#$a*3600 ))            # D-HH
    else echo $(( 10#$a*60 )); fi                                          # MM
  fi
}

host=$(hostname -s)
nf=/tmp/vmpilot-testbed-pbs-nodefile.${SLURM_JOB_ID}
if [ ! -s "$nf" ]; then
  # Torque lists each node once per allocated core
  ncpu=${SLURM_CPUS_ON_NODE:-1}
  nodes=$(scontrol show hostnames "${SLURM_JOB_NODELIST:-$host}" 2>/dev/null || echo "$host")
  tmp=$(mktemp "$nf.XXXXXX") && {
    for n in $nodes; do for ((i = 0; i < ncpu; i++)); do echo "$n"; done; done >"$tmp"
    mv -f "$tmp" "$nf"
  }
fi

echo "export VMPILOT_TESTBED_PBS_SIMULATION=1"
echo "export PBS_JOBID=${SLURM_JOB_ID}.testbed"
echo "export PBS_JOBNAME=${SLURM_JOB_NAME:-}"
echo "export PBS_NODEFILE=$nf"
echo "export PBS_O_WORKDIR=${SLURM_SUBMIT_DIR:-$PWD}"
echo "export PBS_O_HOST=${SLURM_SUBMIT_HOST:-$host}"
echo "export PBS_SERVER=testbed"
echo "export PBS_QUEUE=${SLURM_JOB_PARTITION:-}"
echo "export PBS_ENVIRONMENT=PBS_BATCH"
echo "export PBS_NUM_NODES=${SLURM_JOB_NUM_NODES:-1}"
echo "export PBS_NP=${SLURM_CPUS_ON_NODE:-1}"
limit=$(squeue -h -j "$SLURM_JOB_ID" -o %l 2>/dev/null || true)
if wt=$(to_secs "$limit"); then echo "export PBS_WALLTIME=$wt"; fi
exit 0

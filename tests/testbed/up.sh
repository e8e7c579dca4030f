#!/usr/bin/env bash
# tests/testbed/up.sh -- bring up the vmpilot test bed on a Debian 12 machine, as root,
# without systemd as PID 1.  Idempotent: installs only what is missing, rewrites a config only
# when it differs (then restarts the daemons that read it), starts a daemon only if it is not
# running.  tests/testbed/down.sh stops what this script started.
#
#   * munge + Slurm 22.05 on localhost (slurmctld, slurmd as root), partitions
#     'low' (default, preemptable: CANCEL + GraceTime) and 'high' (preempts 'low'),
#     a second node 'n2': another slurmd on this machine in the network namespace vmpilot-n2
#     (veth 10.77.0.1 <-> 10.77.0.2), only in the partition 'pair' (both nodes),
#     slurm-wlm-torque (qsub/qdel/qstat wrappers), an Epilog hook dir and a TaskProlog that
#     SIMULATES a PBS job environment for jobs named pbs-*.
#   * libvirt (monolithic libvirtd + virtlogd) with qemu (TCG), libvirt-dev for the `virt` crate.
#   * a tiny guest (Debian kernel + busybox initramfs) in /var/cache/vmpilot-testbed/guest/,
#     booted once through libvirt from tests/testbed/guest.xml.in as a check.
#   * for tests/reboot.rs: debootstrap + systemd-container (pinned to the installed systemd) and
#     a Debian rootfs in /var/cache/vmpilot-testbed/nodefs (node-reboot.sh prepare; the test
#     boots it itself).
#
# Paths:  /etc/vmpilot-testbed/{epilog.sh,epilog.d/,task-prolog.sh}
#         n2: /run/vmpilot-testbed/n2/ (its slurmd.pid, epilog.log), /var/spool/slurmd-n2,
#             /var/log/slurm/n2/slurmd.log
#         /run/vmpilot-testbed/*.pid (+ epilog.log)    /var/log/vmpilot-testbed/up.log
#         /var/cache/vmpilot-testbed/guest/{vmlinuz,initrd.img}
# Knobs (environment): TESTBED_PROCTRACK=auto|cgroup|linuxproc  TESTBED_GRACETIME=20
#   TESTBED_KILLWAIT=5  TESTBED_MINJOBAGE=120  TESTBED_GUEST_CHECK=1|0
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive LC_ALL=C
[ "$(id -u)" = 0 ] || { echo "up.sh: must run as root" >&2; exit 2; }

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ETC=/etc/vmpilot-testbed
RUN=/run/vmpilot-testbed
CACHE=/var/cache/vmpilot-testbed
GUEST=$CACHE/guest
LOGDIR=/var/log/vmpilot-testbed
LOG=$LOGDIR/up.log
: "${TESTBED_PROCTRACK:=auto}" "${TESTBED_GRACETIME:=20}" "${TESTBED_KILLWAIT:=5}"
: "${TESTBED_MINJOBAGE:=120}" "${TESTBED_GUEST_CHECK:=1}"

mkdir -p "$ETC/epilog.d" "$RUN" "$CACHE" "$LOGDIR" "$LOGDIR/console"
T0=$(date +%s.%N)
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN{printf "%.1f", b-a}'; }
log() { echo "[testbed $(date +%T)] $*" | tee -a "$LOG" >&2; }
die() { log "FAILED: $*"; log "details: $LOG, /var/log/slurm/, /var/log/libvirt/"; exit 1; }

# pid_alive PIDFILE COMM: the pid file names a live process with that comm
pid_alive() {
  local pid
  [ -s "$1" ] || return 1
  pid=$(tr -dc 0-9 <"$1")
  [ -n "$pid" ] && alive "$pid" && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$2" ]
}
pid_of() { tr -dc 0-9 <"$1" 2>/dev/null || true; }
# alive PID: the process exists and is not a zombie (daemons are re-parented to PID 1, which
# may reap them late)
alive() { local st; st=$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null) && [ -n "$st" ] && [ "$st" != Z ]; }
# stop_pid PIDFILE COMM: SIGTERM exactly that pid, wait <= 15 s, then SIGKILL
stop_pid() {
  local pid i
  pid_alive "$1" "$2" || { rm -f "$1"; return 0; }
  pid=$(pid_of "$1"); log "stopping $2 (pid $pid)"
  kill "$pid" 2>/dev/null || true
  for i in $(seq 150); do alive "$pid" || break; sleep 0.1; done
  alive "$pid" && kill -9 "$pid" 2>/dev/null || true
  rm -f "$1"
}
# install_if_changed SRC DEST MODE: returns 0 if DEST was (re)written
install_if_changed() {
  if [ -f "$2" ] && cmp -s "$1" "$2"; then return 1; fi
  install -D -m "$3" "$1" "$2"
}
# wait_for TIMEOUT_S CMD...: poll every 0.2 s
wait_for() {
  local lim=$1 end; shift
  end=$(( $(date +%s) + lim ))
  while [ "$(date +%s)" -lt "$end" ]; do "$@" >/dev/null 2>&1 && return 0; sleep 0.2; done
  return 1
}

################################################################################ packages
PKGS=(munge slurmctld slurmd slurm-client slurm-wlm-torque
      libvirt-daemon libvirt-daemon-driver-qemu libvirt-clients qemu-system-x86
      libvirt-dev pkg-config busybox-static cpio)
APT_UPDATED=0
apt_update() { [ $APT_UPDATED = 1 ] || { log "apt-get update"; apt-get update -q >>"$LOG" 2>&1; APT_UPDATED=1; }; }
MISSING=()
for p in "${PKGS[@]}"; do
  st=$(dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null || true)
  [ "$st" = installed ] || MISSING+=("$p")
done
if [ ${#MISSING[@]} -gt 0 ]; then
  TP=$(now)
  apt_update
  EXTRA=()
  # Some images carry a newer qemu-utils (backports) that Breaks bookworm's qemu-system-common;
  # apt would remove it.  Keep qemu-img by moving qemu-utils to the qemu-system-x86 version.
  QV=$(apt-cache policy qemu-system-x86 | awk '/Candidate:/{print $2}')
  UV=$(dpkg-query -W -f='${Version}' qemu-utils 2>/dev/null || true)
  if [ -n "$UV" ] && [ -n "$QV" ] && [ "$UV" != "$QV" ] && dpkg --compare-versions "$UV" gt "$QV"; then
    EXTRA=("qemu-utils=$QV"); log "qemu-utils $UV -> $QV (must match qemu-system-x86)"
  fi
  log "installing: ${MISSING[*]} ${EXTRA[*]}"
  # policy-rc.d (exit 101) in these images keeps postinst scripts from starting daemons.
  apt-get install -y -q --no-install-recommends --allow-downgrades "${MISSING[@]}" "${EXTRA[@]}" >>"$LOG" 2>&1 \
    || die "apt-get install"
  log "packages installed in $(since "$TP")s"
else
  log "packages: all present"
fi

################################################################################ munge
install -d -o munge -g munge -m 0755 /run/munge "$RUN/munge"
install -d -o munge -g munge -m 0700 /var/log/munge /var/lib/munge
if [ ! -s /etc/munge/munge.key ]; then
  mungekey --create --keyfile=/etc/munge/munge.key --force >>"$LOG" 2>&1 \
    || dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 2>/dev/null
fi
chown munge:munge /etc/munge/munge.key; chmod 0400 /etc/munge/munge.key
munge_ok() { munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1; }
MUNGE_PF=$RUN/munge/munged.pid
if pid_alive "$MUNGE_PF" munged; then :
elif munge_ok; then log "munge: a munged not started by up.sh is running; using it"
else
  (cd / && runuser -u munge -- /usr/sbin/munged --pid-file="$MUNGE_PF") || die "munged"
  wait_for 10 munge_ok || die "munged does not answer"
  log "munged started (pid $(pid_of "$MUNGE_PF"))"
fi

################################################################################ slurm config
NODE=$(hostname -s)
HW=$(slurmd -C | head -1)
TOPO=$(grep -oE '(CPUs|Boards|SocketsPerBoard|CoresPerSocket|ThreadsPerCore)=[0-9]+' <<<"$HW" | tr '\n' ' ')
HWMEM=$(grep -oE 'RealMemory=[0-9]+' <<<"$HW" | cut -d= -f2)
REALMEM=$(( HWMEM * 9 / 10 ))        # RealMemory above the real amount => node DRAINED
NCPU=$(grep -oE 'CPUs=[0-9]+' <<<"$HW" | cut -d= -f2)
DEFMEM=$(( REALMEM / NCPU / 8 )); [ $DEFMEM -gt 1024 ] && DEFMEM=1024
if [ "$TESTBED_PROCTRACK" = auto ]; then
  if [ -d /sys/fs/cgroup/freezer ] && [ -d /sys/fs/cgroup/memory ] && [ ! -f /sys/fs/cgroup/cgroup.controllers ]; then
    TESTBED_PROCTRACK=cgroup; else TESTBED_PROCTRACK=linuxproc; fi
fi
case "$TESTBED_PROCTRACK" in
  cgroup)    PT=proctrack/cgroup;    TPL=task/cgroup ;;
  linuxproc) PT=proctrack/linuxproc; TPL=task/none ;;
  *) die "TESTBED_PROCTRACK=$TESTBED_PROCTRACK" ;;
esac
log "proctrack: $PT (task plugin $TPL)"
install -d -m 0755 /var/spool/slurmctld /var/spool/slurmd /var/log/slurm /etc/slurm

################################################################################ node n2 network
# A second "node" on this machine: a network namespace joined to the host by a veth pair.
# slurmctld is addressed at the host end (CTLDADDR) so that n2's slurmd and its jobs reach it.
N2NS=vmpilot-n2; N2_HOST_IF=vmp-n2h; N2_IF=vmp-n2; CTLDADDR=10.77.0.1; N2ADDR=10.77.0.2
[ -e "/run/netns/$N2NS" ] || ip netns add "$N2NS" || die "ip netns add $N2NS"
if ! ip link show "$N2_HOST_IF" >/dev/null 2>&1; then
  ip link add "$N2_HOST_IF" type veth peer name "$N2_IF" netns "$N2NS" || die "veth for $N2NS"
fi
ip -4 addr show dev "$N2_HOST_IF" | grep -q "inet $CTLDADDR/" || ip addr add "$CTLDADDR/24" dev "$N2_HOST_IF"
ip link set "$N2_HOST_IF" up
n2net() { nsenter --net="/run/netns/$N2NS" "$@"; }
n2net ip link set lo up
n2net ip -4 addr show dev "$N2_IF" | grep -q "inet $N2ADDR/" || n2net ip addr add "$N2ADDR/24" dev "$N2_IF"
n2net ip link set "$N2_IF" up
# (reachability is checked below, when n2's slurmd registers with slurmctld)

TMP=$(mktemp -d); trap 'rm -rf "$TMP"' EXIT
sed -e "s|@NODE@|$NODE|g" -e "s|@CTLDADDR@|$CTLDADDR|g" -e "s|@N2ADDR@|$N2ADDR|g" -e "s|@N2NS@|$N2NS|g" -e "s|@TOPO@|${TOPO% }|g" -e "s|@REALMEM@|$REALMEM|g" \
    -e "s|@PROCTRACK@|$PT|g" -e "s|@TASKPLUGIN@|$TPL|g" -e "s|@RUNDIR@|$RUN|g" -e "s|@ETCDIR@|$ETC|g" \
    -e "s|@GRACETIME@|$TESTBED_GRACETIME|g" -e "s|@KILLWAIT@|$TESTBED_KILLWAIT|g" \
    -e "s|@MINJOBAGE@|$TESTBED_MINJOBAGE|g" -e "s|@DEFMEMPERCPU@|$DEFMEM|g" \
    "$HERE/slurm.conf.in" >"$TMP/slurm.conf"
grep -q '@[A-Z_]*@' "$TMP/slurm.conf" && die "unfilled placeholder in slurm.conf"
cat >"$TMP/cgroup.conf" <<'EOF'
# generated by tests/testbed/up.sh (used with proctrack/cgroup, task/cgroup; cgroup v1)
CgroupPlugin=cgroup/v1
CgroupMountpoint=/sys/fs/cgroup
CgroupAutomount=no
ConstrainCores=no
ConstrainRAMSpace=yes
ConstrainSwapSpace=no
ConstrainDevices=no
EOF
SL_CHANGED=0
install_if_changed "$TMP/slurm.conf" /etc/slurm/slurm.conf 0644 && SL_CHANGED=1
install_if_changed "$TMP/cgroup.conf" /etc/slurm/cgroup.conf 0644 && SL_CHANGED=1
# hooks are read at each use: no restart needed when they change
install_if_changed "$HERE/epilog.sh" "$ETC/epilog.sh" 0755 || true
install_if_changed "$HERE/task-prolog.sh" "$ETC/task-prolog.sh" 0755 || true
[ -f "$ETC/epilog.d/README" ] || echo "Drop executable Epilog hooks here (see $ETC/epilog.sh)." >"$ETC/epilog.d/README"

################################################################################ slurm daemons
CTLD_PF=$RUN/slurmctld.pid; SLURMD_PF=$RUN/slurmd.pid; N2RUN=$RUN/n2; SLURMD2_PF=$N2RUN/slurmd.pid
if [ $SL_CHANGED = 1 ]; then
  log "slurm config changed"
  stop_pid "$SLURMD2_PF" slurmd
  stop_pid "$SLURMD_PF" slurmd
  stop_pid "$CTLD_PF" slurmctld
fi
if ! pid_alive "$CTLD_PF" slurmctld; then
  (cd / && /usr/sbin/slurmctld) || die "slurmctld did not start (see /var/log/slurm/slurmctld.log)"
  log "slurmctld started"
fi
wait_for 30 scontrol ping || die "slurmctld does not answer"
if ! pid_alive "$SLURMD_PF" slurmd; then
  (cd / && /usr/sbin/slurmd) || die "slurmd did not start (see /var/log/slurm/slurmd.log)"
  log "slurmd started"
fi
node_state() { timeout 10 sinfo -h -n "$NODE" -o '%T' 2>/dev/null | head -1; }
node_usable() {
  local s; s=$(node_state)
  case "$s" in
    idle|mixed|allocated|completing) return 0 ;;
    down*|drain*|fail*)   # e.g. a failed Epilog hook of an earlier test drains the node
      log "node $NODE is $s ($(scontrol show node "$NODE" 2>/dev/null | grep -o 'Reason=.*' || true)): resuming"
      scontrol update NodeName="$NODE" State=RESUME >/dev/null 2>&1 || true ;;
  esac
  return 1
}
if ! wait_for 60 node_usable; then
  scontrol show node "$NODE" >>"$LOG" 2>&1 || true
  die "node $NODE not usable: $(node_state) ($(scontrol show node "$NODE" 2>/dev/null | grep -o 'Reason=.*'))"
fi
log "node $NODE: $(node_state)"
# job_state ID -> JobState
job_state() { scontrol show job -o "$1" 2>/dev/null | grep -oE 'JobState=[A-Z_]+' | cut -d= -f2; }
job_done() { case "$(job_state "$1")" in COMPLETED|FAILED|CANCELLED|TIMEOUT|OUT_OF_MEMORY|NODE_FAIL|PREEMPTED|BOOT_FAIL|DEADLINE) return 0 ;; esac; return 1; }

# n2's slurmd: in the network namespace (nsenter --net; `ip netns exec` would remount /sys and
# hide the cgroup hierarchies proctrack/cgroup needs) and in a mount namespace of its own,
# where the pid file, spool and log paths of slurm.conf are bind mounts of n2's own dirs.
install -d -m 0755 "$N2RUN" /var/spool/slurmd-n2 /var/log/slurm/n2
if ! pid_alive "$SLURMD2_PF" slurmd; then
  (cd / && unshare -m --propagation private sh -c "
     mount --bind '$N2RUN' '$RUN' && mount --bind /var/spool/slurmd-n2 /var/spool/slurmd &&
     mount --bind /var/log/slurm/n2 /var/log/slurm &&
     exec nsenter --net=/run/netns/$N2NS /usr/sbin/slurmd -N n2") \
    || die "slurmd -N n2 did not start (see /var/log/slurm/n2/slurmd.log)"
  log "slurmd n2 started"
fi
n2_state() { timeout 10 sinfo -h -n n2 -o '%T' 2>/dev/null | head -1; }
n2_usable() {
  case "$(n2_state)" in
    idle|mixed|allocated|completing) return 0 ;;
    down*|drain*|fail*) scontrol update NodeName=n2 State=RESUME >/dev/null 2>&1 || true ;;
  esac
  return 1
}
wait_for 60 n2_usable || die "node n2 not usable: $(n2_state) ($(scontrol show node n2 2>/dev/null | grep -o 'Reason=.*'))"
TJ=$(now)
timeout 60 sbatch -p pair -w n2 -t 1 --mem=32M -J vmpilot-testbed-n2 -o /dev/null --wrap true >"$TMP/n2job" 2>>"$LOG" \
  || die "sbatch -w n2"
N2J=$(grep -oE '[0-9]+' "$TMP/n2job" | tail -1)
wait_for 60 job_done "$N2J" || die "job $N2J on n2 did not end ($(job_state "$N2J"))"
[ "$(job_state "$N2J")" = COMPLETED ] || die "job $N2J on n2: $(job_state "$N2J")"
log "node n2: $(n2_state), batch job ${N2J} ok in $(since "$TJ")s"


# check 1: a trivial srun step
TJ=$(now)
timeout 60 srun -p low -t 1 --mem=32M -J vmpilot-testbed-srun true >>"$LOG" 2>&1 || die "srun -p low true"
T_SRUN=$(since "$TJ")

# check 2: a batch job in a PBS-simulation job through the Torque qsub wrapper; it reports the
# PBS_* environment its batch shell sees.  Its end also proves that the Epilog ran.
PROBE_HOOK=$ETC/epilog.d/zz-vmpilot-testbed-probe
cat >"$PROBE_HOOK" <<EOF
#!/bin/sh
# temporary hook of tests/testbed/up.sh (removed by it)
touch "$RUN/epilog-probe.\$SLURM_JOB_ID"
EOF
chmod 755 "$PROBE_HOOK"
cat >"$TMP/probe.sh" <<'EOF'
#!/bin/bash
#PBS -N pbs-vmpilot-testbed-probe
#PBS -l walltime=00:02:00
#PBS -l mem=32mb
echo "PBS_JOBID=$PBS_JOBID PBS_WALLTIME=$PBS_WALLTIME PBS_NODEFILE=$PBS_NODEFILE PBS_O_WORKDIR=$PBS_O_WORKDIR"
EOF
chmod 755 "$TMP/probe.sh"
TJ=$(now)
QJ=$(cd "$TMP" && timeout 30 qsub -o "$TMP/probe.out" "$TMP/probe.sh" 2>>"$LOG" | tr -dc 0-9) || true
[ -n "$QJ" ] || { rm -f "$PROBE_HOOK"; die "qsub"; }
wait_for 60 job_done "$QJ" || { rm -f "$PROBE_HOOK"; die "qsub job $QJ did not end ($(job_state "$QJ"))"; }
wait_for 30 test -e "$RUN/epilog-probe.$QJ" || { rm -f "$PROBE_HOOK"; die "Epilog hook did not run for job $QJ"; }
T_QSUB=$(since "$TJ")
rm -f "$PROBE_HOOK" "$RUN/epilog-probe.$QJ"
PBSLINE=$(cat "$TMP/probe.out" 2>/dev/null || true)
[ "$(job_state "$QJ")" = COMPLETED ] || die "qsub job $QJ: $(job_state "$QJ")"
grep -q "PBS_JOBID=$QJ.testbed PBS_WALLTIME=120 " <<<"$PBSLINE" \
  || die "PBS simulation: batch shell saw '$PBSLINE'"
log "slurm ok: srun ${T_SRUN}s, qsub job $QJ + epilog hook ${T_QSUB}s; $PBSLINE"

################################################################################ libvirt
getent group kvm >/dev/null || groupadd -r kvm
getent group libvirt-qemu >/dev/null || groupadd -r libvirt-qemu
getent passwd libvirt-qemu >/dev/null \
  || useradd -r -g libvirt-qemu -G kvm -d /var/lib/libvirt -s /usr/sbin/nologin libvirt-qemu
install -d -m 0755 /etc/libvirt /var/log/libvirt /var/lib/libvirt
cat >"$TMP/qemu.conf" <<'EOF'
# generated by tests/testbed/up.sh: qemu runs as root, no SELinux/AppArmor, no chown of images
user = "root"
group = "root"
dynamic_ownership = 0
security_driver = "none"
EOF
LV_PF=$RUN/libvirtd.pid; VL_PF=$RUN/virtlogd.pid
VIRSH=(timeout 60 virsh -q -c qemu:///system)
if install_if_changed "$TMP/qemu.conf" /etc/libvirt/qemu.conf 0644; then
  log "qemu.conf changed"; stop_pid "$LV_PF" libvirtd
fi
if ! pid_alive "$VL_PF" virtlogd; then
  if [ -S /run/libvirt/virtlogd-sock ] && timeout 5 virt-admin -c virtlogd:///system version >/dev/null 2>&1; then
    log "virtlogd: one not started by up.sh is running; using it"
  else
    (cd / && /usr/sbin/virtlogd -d -p "$VL_PF") || die "virtlogd"
    log "virtlogd started"
  fi
fi
if ! pid_alive "$LV_PF" libvirtd; then
  if [ -S /run/libvirt/libvirt-sock ] && timeout 10 virsh -q -c qemu:///system version >/dev/null 2>&1; then
    log "libvirtd: one not started by up.sh is running; using it"
  else
    (cd / && /usr/sbin/libvirtd -d -p "$LV_PF") || die "libvirtd"
    log "libvirtd started"
  fi
fi
TL=$(now)
wait_for 60 "${VIRSH[@]}" list || die "virsh -c qemu:///system list"
log "libvirt answers ($(since "$TL")s)"

################################################################################ guest assets
# The initrd is rebuilt when guest-init.sh changes; the kernel is fetched once.
INIT_SUM=$(sha256sum "$HERE/guest-init.sh" | cut -c1-16)
if [ ! -s "$GUEST/vmlinuz" ] || [ ! -d "$GUEST/mods" ]; then
  TG=$(now)
  KPKG=$(apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/{print $2; exit}' || true)
  [ -n "$KPKG" ] || { apt_update; KPKG=$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-[0-9]/{print $2; exit}'); }
  [ -n "$KPKG" ] || die "no linux-image-*-amd64 package found"
  mkdir -p "$TMP/k"
  (cd "$TMP/k" && apt-get download -q -o APT::Sandbox::User=root "$KPKG" >>"$LOG" 2>&1) || die "apt-get download $KPKG"
  dpkg-deb -x "$TMP/k"/*.deb "$TMP/k/root"
  KV=$(ls "$TMP/k/root/lib/modules" | head -1)
  rm -rf "$GUEST.new"; mkdir -p "$GUEST.new/mods"
  cp "$TMP/k/root/boot/vmlinuz-$KV" "$GUEST.new/vmlinuz"
  for m in virtio/virtio_ring virtio/virtio virtio/virtio_pci_modern_dev virtio/virtio_pci_legacy_dev \
           virtio/virtio_pci virtio/virtio_balloon acpi/button input/evdev; do
    f="$TMP/k/root/lib/modules/$KV/kernel/drivers/$m.ko"
    [ -f "$f" ] && cp "$f" "$GUEST.new/mods/"     # absent = built into the kernel
  done
  echo "$KPKG $KV" >"$GUEST.new/kernel.txt"
  rm -rf "$GUEST"; mv "$GUEST.new" "$GUEST"; rm -rf "$TMP/k"
  log "guest kernel $KPKG cached ($(since "$TG")s)"
fi
if [ ! -s "$GUEST/initrd.img" ] || [ "$(cat "$GUEST/initrd.sum" 2>/dev/null)" != "$INIT_SUM" ]; then
  I=$TMP/initramfs; mkdir -p "$I"/{bin,proc,sys,dev,mods}
  cp /bin/busybox "$I/bin/busybox"
  cp "$GUEST"/mods/*.ko "$I/mods/" 2>/dev/null || true
  install -m 0755 "$HERE/guest-init.sh" "$I/init"
  (cd "$I" && find . | cpio -o -H newc 2>/dev/null | gzip -1 >"$GUEST/initrd.img.new")
  mv "$GUEST/initrd.img.new" "$GUEST/initrd.img"
  echo "$INIT_SUM" >"$GUEST/initrd.sum"
  log "guest initrd built"
fi

################################################################################ guest check
GUEST_RESULT=skipped
if [ "$TESTBED_GUEST_CHECK" = 1 ]; then
  DOM=vmpilot-testbed-probe
  CONS=$LOGDIR/console/$DOM.log
  "${VIRSH[@]}" destroy "$DOM" >/dev/null 2>&1 || true
  "${VIRSH[@]}" undefine "$DOM" >/dev/null 2>&1 || true
  rm -f "$CONS"
  "$HERE/guest-xml.sh" "$DOM" "" 131072 "$CONS" "" "" >"$TMP/dom.xml"
  TB=$(now)
  "${VIRSH[@]}" define "$TMP/dom.xml" >>"$LOG" 2>&1 || die "virsh define"
  "${VIRSH[@]}" start "$DOM" >>"$LOG" 2>&1 || die "virsh start $DOM"
  if ! wait_for 90 grep -aq VMPILOT-GUEST-READY "$CONS"; then
    cat "$CONS" >>"$LOG" 2>/dev/null || true
    "${VIRSH[@]}" destroy "$DOM" >/dev/null 2>&1 || true
    die "guest did not reach VMPILOT-GUEST-READY in 90 s (console: $CONS)"
  fi
  T_BOOT=$(since "$TB")
  ACPI=$(grep -ao 'VMPILOT-GUEST-ACPI [a-z]*' "$CONS" | head -1 | cut -d' ' -f2)
  # ACPI power button -> the default guest powers off (then the domain is shut off)
  TS=$(now)
  "${VIRSH[@]}" shutdown "$DOM" >>"$LOG" 2>&1 || true
  if wait_for 30 sh -c "virsh -q -c qemu:///system domstate $DOM | grep -q 'shut off'"; then
    SHUT="acpi-poweroff=$(since "$TS")s"
  else
    SHUT="acpi-poweroff=NO"
  fi
  "${VIRSH[@]}" destroy "$DOM" >/dev/null 2>&1 || true
  "${VIRSH[@]}" undefine "$DOM" >>"$LOG" 2>&1 || true
  GUEST_RESULT="boot=${T_BOOT}s acpi=${ACPI:-?} $SHUT"
  [ "$ACPI" = handled ] && [ "$SHUT" = "${SHUT#*=NO}" ] || log "WARNING: guest does not power off on ACPI: $GUEST_RESULT"
  log "guest ok: $GUEST_RESULT"
fi

################################################################################ nspawn node rootfs
T_NODEFS=$(now)
bash "$HERE/node-reboot.sh" prepare >>"$LOG" 2>&1 || { log "node-reboot.sh prepare failed (see $LOG)"; exit 1; }
log "nspawn node rootfs ready in $(since "$T_NODEFS")s: /var/cache/vmpilot-testbed/nodefs"

################################################################################ summary
SLV=$(sinfo -V 2>/dev/null | awk '{print $2}')
LVV=$(virsh -c qemu:///system version 2>/dev/null | awk '/Using library/{print $4}')
QEV=$(qemu-system-x86_64 --version | awk 'NR==1{print $4}')
cat <<EOF
vmpilot test bed READY in $(since "$T0")s
  slurm     $SLV, node $NODE ($(node_state)), $PT, partitions: low (default, preemptable, GraceTime=${TESTBED_GRACETIME}s) high
            node n2 ($(n2_state)) in netns $N2NS at $N2ADDR, slurmd pid $(pid_of "$SLURMD2_PF"), partition pair ($NODE + n2)
            slurmctld pid $(pid_of "$CTLD_PF"), slurmd pid $(pid_of "$SLURMD_PF"), munged pid $(pid_of "$MUNGE_PF")
            Epilog $ETC/epilog.sh -> hooks in $ETC/epilog.d/ ; TaskProlog $ETC/task-prolog.sh (PBS simulation for pbs-* jobs)
  libvirt   $LVV, qemu $QEV (TCG), libvirtd pid $(pid_of "$LV_PF"), virtlogd pid $(pid_of "$VL_PF")
  guest     $GUEST/vmlinuz $GUEST/initrd.img ($(cat "$GUEST/kernel.txt")); template $HERE/guest.xml.in
            check: $GUEST_RESULT
  nspawn    node rootfs /var/cache/vmpilot-testbed/nodefs (tests/testbed/node-reboot.sh; booted by tests/reboot.rs)
EOF

#!/bin/bash
# node-reboot.sh: a "node" with systemd as PID 1 in systemd-nspawn, for tests/reboot.rs.
#
#   node-reboot.sh prepare        install debootstrap + systemd-container (pinned to the
#                                 installed systemd), debootstrap the rootfs once (cached)
#   node-reboot.sh install BIN    put BIN (/usr/bin/vmpilot), the project's units, the slurmd
#                                 drop-in, a stand-in slurmd.service and a simulated-host
#                                 config into the rootfs; empty its /var/lib/vmpilot
#   node-reboot.sh start          boot the node (a loop restarts it after `systemctl reboot`)
#   node-reboot.sh pid            host PID of the node's PID 1 (systemd); fails if not booted
#   node-reboot.sh powerloss      SIGKILL the nspawn process and the node's PID 1 (no shutdown)
#   node-reboot.sh stop           orderly poweroff, then make sure the loop is gone
#   node-reboot.sh selftest BIN   prepare + install + boot, reboot once, check the unit order
#
# Idempotent: only what is missing is installed, the rootfs is debootstrapped only when the
# marker is missing, and `stop` ends only the loop this script started (PID in $STATE/loop.pid).
# The node has --private-network; nothing from the host is bind-mounted into it.
# Works on a host whose PID 1 is not systemd (--register=no --keep-unit: no machined, no bus).
# Env: NODEFS (rootfs, default /var/cache/vmpilot-testbed/nodefs),
#      STATE (run dir: loop pid, console log; default /run/vmpilot-testbed/node).
set -euo pipefail

NODEFS=${NODEFS:-/var/cache/vmpilot-testbed/nodefs}
STATE=${STATE:-/run/vmpilot-testbed/node}
REPO=$(cd "$(dirname "$0")/../.." && pwd)
MARK=$NODEFS/.vmpilot-nodefs-v1
say() { echo "node-reboot: $*" >&2; }

prepare() {
  if ! command -v systemd-nspawn >/dev/null || ! command -v debootstrap >/dev/null; then
    apt-get update -qq || true
    # systemd-container must be the installed systemd's version exactly: the candidate would
    # make apt upgrade systemd, systemd-sysv, libsystemd0, ... on the host.
    local sdver pkg=systemd-container
    sdver=$(dpkg-query -W -f='${Version}' systemd)
    if apt-cache madison systemd-container | awk '{print $3}' | grep -qxF "$sdver"; then
      pkg="systemd-container=$sdver"
    else
      say "systemd-container $sdver is not in apt; refusing to upgrade the host's systemd"
      exit 2
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$pkg" debootstrap
  fi
  [ -e "$MARK" ] && return 0
  # The host's own Debian mirror (the first non-security one in the apt sources).
  local mirror
  mirror=$( { grep -hE '^\s*URIs:' /etc/apt/sources.list.d/*.sources 2>/dev/null | awk '{print $2}';
              grep -hE '^\s*deb\s' /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null | awk '{print $2}'; } \
            | grep '/debian/*$' | grep -v security | head -1 ) || true
  [ -n "$mirror" ] || { say "no Debian mirror in the apt sources"; exit 2; }
  local suite
  suite=$(. /etc/os-release && echo "${VERSION_CODENAME:-bookworm}")
  rm -rf "$NODEFS"; mkdir -p "$(dirname "$NODEFS")" "$STATE"
  say "debootstrap $suite -> $NODEFS from $mirror"
  # libvirt0: the vmpilot binary links libvirt (the node uses the simulated host all the same).
  debootstrap --variant=minbase --include=systemd,systemd-sysv,dbus,libvirt0 \
      "$suite" "$NODEFS" "$mirror" > "$STATE/debootstrap.log" 2>&1 \
    || { tail -20 "$STATE/debootstrap.log" >&2; exit 1; }
  echo node > "$NODEFS/etc/hostname"
  : > "$NODEFS/etc/machine-id"     # nspawn gives each boot a transient one
  rm -rf "$NODEFS/var/cache/apt/archives/"*.deb
  touch "$MARK"
}

install_node() {
  local bin=$1
  [ -e "$MARK" ] || { say "no rootfs; run prepare first"; exit 2; }
  install -m 0755 "$bin" "$NODEFS/usr/bin/vmpilot"
  install -m 0644 "$REPO/systemd/vmpilot-recover.service" "$REPO/systemd/vmpilot-drain.service" \
      "$NODEFS/lib/systemd/system/"
  # The batch daemon: a long-running stand-in under the real name, so the shipped units'
  # Before=/After=slurmd.service and the shipped drop-in apply to it unchanged.
  cat > "$NODEFS/etc/systemd/system/slurmd.service" <<'EOF'
[Unit]
Description=stand-in for slurmd (vmpilot reboot test)
After=network.target

[Service]
ExecStart=/bin/sleep infinity

[Install]
WantedBy=multi-user.target
EOF
  install -D -m 0644 "$REPO/systemd/slurmd.service.d/vmpilot.conf" \
      "$NODEFS/etc/systemd/system/slurmd.service.d/vmpilot.conf"
  mkdir -p "$NODEFS/etc/vmpilot"
  # The simulated host, sized like tests/common's Node::new (the test makes records for this
  # state dir from the host with that config, before the node boots).
  cat > "$NODEFS/etc/vmpilot/vmpilot.toml" <<'EOF'
state_dir = "/var/lib/vmpilot"
node_name = "testnode"

[lease]
grace = "5s"
lock_timeout = "2s"
max_guests = 2

[host]
backend = "simulated"
host_reserve = "512M"
guest_overhead = "64M"

[host.simulated]
memory = "8G"
cpus = 4

[log]
level = "debug"
EOF
  rm -rf "$NODEFS/var/lib/vmpilot"; mkdir -p "$NODEFS/var/lib/vmpilot"
  # Journal on the node's disk, so each boot's journal survives the next reboot.
  rm -rf "$NODEFS/var/log/journal"; mkdir -p "$NODEFS/var/log/journal"
  systemctl --root="$NODEFS" enable vmpilot-recover.service vmpilot-drain.service slurmd.service >/dev/null 2>&1
  chroot "$NODEFS" /usr/bin/vmpilot --version >/dev/null
}

loop_pid() { local p; p=$(cat "$STATE/loop.pid" 2>/dev/null) && kill -0 "$p" 2>/dev/null && echo "$p"; }
nspawn_pid() { local l; l=$(loop_pid) && pgrep -P "$l" -x systemd-nspawn; }
node_pid() { local n; n=$(nspawn_pid) && pgrep -P "$n" -x systemd; }

stop_loop() {
  local lp np cp
  lp=$(loop_pid) || { rm -f "$STATE/loop.pid"; return 0; }
  : > "$STATE/stop"                               # the loop must not boot again
  np=$(nspawn_pid || true); cp=$(node_pid || true)
  if [ -n "$cp" ]; then timeout 10 nsenter -t "$cp" -a systemctl poweroff 2>/dev/null || true; fi
  for _ in $(seq 1 120); do kill -0 "$lp" 2>/dev/null || break; sleep 0.25; done
  if kill -0 "$lp" 2>/dev/null; then
    [ -n "$np" ] && kill -KILL "$np" 2>/dev/null || true
    [ -n "$cp" ] && kill -KILL "$cp" 2>/dev/null || true
    kill "$lp" 2>/dev/null || true
  fi
  rm -f "$STATE/loop.pid"
}

start() {
  mkdir -p "$STATE"
  stop_loop
  rm -f "$STATE/stop"
  # Exit 133 = the node asked for a reboot (systemd-nspawn@.service's RestartForceExitStatus);
  # anything else (poweroff, SIGKILL) ends the loop.
  cat > "$STATE/loop.sh" <<EOF
#!/bin/bash
n=0
while :; do
  n=\$((n+1)); echo "=== nspawn boot #\$n at \$(date +%s.%N) ==="
  systemd-nspawn -b -D "$NODEFS" --register=no --keep-unit --console=read-only \\
     --private-network -M node systemd.show_status=1 systemd.log_color=0 </dev/null
  rc=\$?; echo "=== nspawn exited rc=\$rc at \$(date +%s.%N) ==="
  [ \$rc -eq 133 ] && [ ! -e "$STATE/stop" ] || break
done
EOF
  chmod +x "$STATE/loop.sh"
  setsid "$STATE/loop.sh" >> "$STATE/console.log" 2>&1 < /dev/null &
  echo $! > "$STATE/loop.pid"
}

powerloss() {
  local lp np cp
  lp=$(loop_pid) || { say "node not running"; exit 1; }
  np=$(nspawn_pid) || { say "no nspawn"; exit 1; }
  cp=$(node_pid || true)
  : > "$STATE/stop"
  kill -KILL "$np"
  [ -n "$cp" ] && kill -KILL "$cp" 2>/dev/null || true   # everything in the node's PID ns dies
  for _ in $(seq 1 80); do kill -0 "$lp" 2>/dev/null || break; sleep 0.25; done
  if [ -n "$cp" ]; then for _ in $(seq 1 80); do kill -0 "$cp" 2>/dev/null || break; sleep 0.25; done; fi
  rm -f "$STATE/loop.pid"
}

# Wait until the node's systemd has finished booting; print its boot id.
wait_booted() {
  local cp
  for _ in $(seq 1 240); do
    if cp=$(node_pid) && st=$(timeout 5 nsenter -t "$cp" -a systemctl is-system-running 2>/dev/null; true) \
       && { [ "$st" = running ] || [ "$st" = degraded ]; }; then
      nsenter -t "$cp" -a cat /proc/sys/kernel/random/boot_id; return 0
    fi
    sleep 0.25
  done
  say "node did not boot; console: $STATE/console.log"; return 1
}

selftest() {
  prepare; install_node "$1"; start
  local b1 b2 cp order
  b1=$(wait_booted)
  cp=$(node_pid); nsenter -t "$cp" -a systemctl reboot
  for _ in $(seq 1 120); do
    b2=$(wait_booted) && [ "$b2" != "$b1" ] && break; sleep 0.25
  done
  cp=$(node_pid)
  order=$(nsenter -t "$cp" -a sh -c 'r=$(systemctl show -P ActiveEnterTimestampMonotonic vmpilot-recover.service); s=$(systemctl show -P ExecMainStartTimestampMonotonic slurmd.service); echo $r $s')
  stop_loop
  say "boot ids $b1 -> $b2; recover done / slurmd start (monotonic us): $order"
  [ "$b1" != "$b2" ] && awk -v o="$order" 'BEGIN{split(o,a," "); exit !(a[1]>0 && a[1]<=a[2])}'
}

case "${1:-}" in
  prepare) prepare ;;
  install) install_node "${2:?binary}" ;;
  start) start ;;
  wait) wait_booted ;;
  pid) node_pid ;;
  powerloss) powerloss ;;
  stop) stop_loop ;;
  selftest) selftest "${2:?binary}" ;;
  *) sed -n '2,20p' "$0"; exit 2 ;;
esac

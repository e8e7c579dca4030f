#!/usr/bin/env bash
# Memory of one pilot holding a lease, per host backend: peak RSS (VmHWM), and RSS, PSS and
# private memory (smaps_rollup) once reserved, with a second pilot holding a lease on the same
# node (as on a real node, the binary's pages are then shared, not private). Usage: scripts/footprint.sh BIN_DIR [LABEL]
# BIN_DIR holds `vmpilot` (and, for a split build, `vmpilot-libvirt`). The libvirt row needs
# the test bed's libvirtd (qemu:///system); the Xen row runs against tests/fakes/xl (a FAKE
# xl: Xen cannot run here). Figures for docs/performance.md ("Footprint by backend").
set -euo pipefail
bin_dir=$(cd "$1" && pwd)
label=${2:-$bin_dir}
repo=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

kb() { awk -v k="$1:" '$1 == k { print $2 }' "$2"; }
mib() { awk -v v="$1" 'BEGIN { printf "%.1f", v / 1024 }'; }

measure() { # backend, extra [host] toml, [host.X] section
  local backend=$1 host=$2 section=$3 dir=$work/$1
  mkdir -p "$dir"
  printf 'state_dir = "%s/state"\nnode_name = "fp"\n[lease]\ngrace = "5s"\n[host]\nbackend = "%s"\n%s\n%s\n' \
    "$dir" "$backend" "$host" "$section" >"$dir/vmpilot.toml"
  local pids=() lease i
  for lease in fp0 fp; do
    FAKE_XL_STATE=$dir/xl.json FAKE_XL_LOG=$dir/xl.log \
      "$bin_dir/vmpilot" --config "$dir/vmpilot.toml" run --memory 256M --cpus 1 \
      --walltime 10m --lease-id $lease >"$dir/$lease.out" 2>"$dir/$lease.err" &
    pids+=($!)
    for i in $(seq 100); do
      grep -q '"state": "reserved"' "$dir/state/leases/$lease.json" 2>/dev/null && break
      sleep 0.1
    done
    if ! grep -q '"state": "reserved"' "$dir/state/leases/$lease.json" 2>/dev/null; then
      echo "| $label | $backend | (not reserved: $(tail -n 1 "$dir/$lease.err")) |"
      kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true
      return
    fi
  done
  local pid=${pids[1]}
  sleep 2
  local exe hwm rss pss priv
  exe=$(basename "$(readlink "/proc/$pid/exe")")
  hwm=$(kb VmHWM "/proc/$pid/status")
  rss=$(kb Rss "/proc/$pid/smaps_rollup")
  pss=$(kb Pss "/proc/$pid/smaps_rollup")
  priv=$(( $(kb Private_Clean "/proc/$pid/smaps_rollup") + $(kb Private_Dirty "/proc/$pid/smaps_rollup") ))
  local libs
  libs=$(awk '$6 ~ /\.so/ { print $6 }' "/proc/$pid/maps" | sort -u | wc -l)
  kill -TERM "${pids[@]}"; wait "${pids[@]}" 2>/dev/null || true
  echo "| $label | $backend | $exe | $(mib "$hwm") | $(mib "$rss") | $(mib "$pss") | $(mib "$priv") | $libs |"
}

echo "| build | backend | process | peak RSS MiB | RSS MiB | PSS MiB | private MiB | shared libraries |"
echo "|---|---|---|---|---|---|---|---|"
measure simulated '' $'[host.simulated]\nmemory = "8G"\ncpus = 4'
measure xen '' "$(printf '[host.xen]\nxl = "%s"\ndom0_min_memory = "1G"' "$repo/tests/fakes/xl")"
measure libvirt '' $'[host.libvirt]\nuri = "qemu:///system"\nhugepages = false'

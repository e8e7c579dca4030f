#!/usr/bin/env bash
# Render tests/testbed/guest.xml.in to stdout.
# usage: guest-xml.sh NAME [UUID] [MEMORY_KIB] [CONSOLE_LOG] [GUEST_ARGS] [METADATA_XML]
#   UUID defaults to a stable UUID derived from NAME (so a name can be re-defined),
#   MEMORY_KIB to 131072, CONSOLE_LOG to /var/log/vmpilot-testbed/console/NAME.log,
#   GUEST_ARGS to "" (use "vmpilot.ignore_acpi" for a guest that refuses shutdown).
set -euo pipefail
[ $# -ge 1 ] || { sed -n '2,7p' "$0" >&2; exit 2; }
name=$1
uuid=${2:-}
if [ -z "$uuid" ]; then
  h=$(printf '%s' "vmpilot-testbed:$name" | sha256sum | cut -c1-32)
  uuid="${h:0:8}-${h:8:4}-4${h:13:3}-8${h:17:3}-${h:20:12}"
fi
mem=${3:-131072}
cons=${4:-/var/log/vmpilot-testbed/console/$name.log}
args=${5:-}
meta=${6:-}
esc() { printf '%s' "$1" | sed -e 's/[\\&|]/\\&/g'; }
sed -e "s|@NAME@|$(esc "$name")|g" -e "s|@UUID@|$(esc "$uuid")|g" \
    -e "s|@MEMORY_KIB@|$(esc "$mem")|g" -e "s|@CONSOLE_LOG@|$(esc "$cons")|g" \
    -e "s|@GUEST_ARGS@|$(esc "$args")|g" -e "s|@METADATA@|$(esc "$meta")|g" \
    "$(dirname "$0")/guest.xml.in"

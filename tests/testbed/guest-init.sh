#!/bin/busybox sh
# vmpilot test bed: /init of the tiny test guest (busybox initramfs built by up.sh).
# Kernel command line switches (<cmdline> in guest.xml.in, via @GUEST_ARGS@):
#   (none)               default guest: an ACPI power-button press (virsh shutdown) makes it
#                        power off cleanly (busybox acpid -> /etc/acpi/PWRF/00000080).
#   vmpilot.ignore_acpi  the "guest that refuses shutdown": it never starts acpid and ignores
#                        the power button; only virsh destroy stops it.
# Console lines (serial ttyS0) the tests can wait for:
#   VMPILOT-GUEST-UP uptime=<s> kernel=<release>
#   VMPILOT-GUEST-ACPI handled|ignored
#   VMPILOT-GUEST-READY
#   VMPILOT-GUEST-POWEROFF uptime=<s>       (on the power button, default guest only)
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev 2>/dev/null
echo "VMPILOT-GUEST-UP uptime=$(cut -d' ' -f1 /proc/uptime) kernel=$(uname -r)"
for m in virtio_ring virtio virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci virtio_balloon; do
  [ -f /mods/$m.ko ] && insmod /mods/$m.ko 2>/dev/null
done
if grep -qw vmpilot.ignore_acpi /proc/cmdline; then
  echo "VMPILOT-GUEST-ACPI ignored"
else
  for m in button evdev; do [ -f /mods/$m.ko ] && insmod /mods/$m.ko 2>/dev/null; done
  mkdir -p /etc/acpi/PWRF
  cat > /etc/acpi/PWRF/00000080 <<'EOS'
#!/bin/sh
echo "VMPILOT-GUEST-POWEROFF uptime=$(cut -d' ' -f1 /proc/uptime)" > /dev/console
sync
poweroff -f
EOS
  chmod 755 /etc/acpi/PWRF/00000080
  # busybox acpid's built-in table maps the power button to the action PWRF/00000080 under
  # the -c dir (an -a action file would replace that table)
  acpid -f -c /etc/acpi -l /dev/null </dev/null >/dev/null 2>&1 &
  echo "VMPILOT-GUEST-ACPI handled"
fi
echo "VMPILOT-GUEST-READY"
while :; do sleep 3600; done

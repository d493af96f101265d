// tsvisor's /init for the initramfs it builds: a busybox shell script, run by
// the kernel as PID 1 (Documentation/filesystems/ramfs-rootfs-initramfs.rst).
//
// Protocol with the hypervisor:
// - `tsvisor run -- CMD ARGS...` appends a second cpio archive to the initrd
//   holding /tsvisor/argv, a shell fragment that sets "$@" to the command
//   (every word single-quoted by the host), and, when the host's stdin is a
//   pipe or a file, /tsvisor/stdin with all of it: the command reads it byte
//   for byte with an exact end, which a serial line in canonical mode cannot
//   give (it echoes, edits lines, and has no end-of-file but a typed ^D).
//   Without the archive, init starts an interactive shell on the console.
// - The command's exit status goes back through the sifive,test0 finisher at
//   0x10_0000 (the device QEMU's virt machine uses for the same purpose):
//   0x5555 = pass, (status << 16) | 0x3333 = fail with a status. Its page is
//   not claimed by any driver, so /dev/mem may map it even with
//   CONFIG_IO_STRICT_DEVMEM.
// - The interactive shell runs under busybox's init, so poweroff, halt and
//   reboot in it work as on any busybox system.
// - `tsvisor.marker=TEXT` on the kernel command line makes init print TEXT
//   once it runs (the boot benchmark's "reached userspace" point).
// - `tsvisor.dhcp=eth0[,eth1...]` makes init bring those interfaces up with
//   busybox's udhcpc before the command or shell starts: the user-mode
//   network (`--net user`, tsvisor run's default) answers DHCP with the
//   guest's address, route and DNS server. Cards on other backends stay down
//   for the user to configure.
// - `tsvisor.console=hvc0` (`tsvisor run --console hvc0`) moves the command
//   or the shell to the virtio console once its driver is up. The kernel
//   keeps ttyS0 as its console: hvc0 appears only after virtio_mmio is
//   loaded, too late for the kernel's own messages and for /dev/console.
// - `tsvisor.root=/dev/vda` (`tsvisor run --image debian`): init mounts that
//   ext4 disk; a command runs chrooted in it (its status comes back through
//   the finisher as above); with none, init moves /dev, /proc, /sys and /run
//   into it and switch_roots to its /sbin/init (systemd), which then owns the
//   machine: its poweroff goes through the syscon finisher (Debian's kernel
//   drives syscon-poweroff), as the busybox guest's does.
//   `tsvisor.root=/dev/vda,ro` (the guest of a fast-start snapshot,
//   cli/fast-start.ts) mounts it read-only: nothing is written to the disk
//   before the snapshot, and the command's fragment remounts it read-write.
// - `tsvisor.share=TAG:/GUEST/DIR[,TAG:/DIR...]` (`tsvisor run --share`)
//   makes init mount each virtio-fs device TAG at its directory once the
//   virtio drivers are loaded (mkdir -p first). A directory holds no comma,
//   colon or space (the host refuses such a GUESTDIR).
// - With a virtio-vsock device (device ID 19, modalias virtio:d00000013...),
//   init starts the guest agent of `tsvisor vm exec` (/bin/tsvisor-agent,
//   images/agent/agent.c) in the background, listening on vsock port 52.

export const INIT_PATH = "/init";
export const ARGV_PATH = "/tsvisor/argv";
export const STDIN_PATH = "/tsvisor/stdin";
export const FINISHER_ADDR = 0x10_0000;

export const INIT_SCRIPT = `#!/bin/busybox sh
/bin/busybox mkdir -p /bin /sbin /usr/bin /usr/sbin /proc /sys /dev /tmp /run /root /mnt
/bin/busybox --install -s
export PATH=/bin:/sbin:/usr/bin:/usr/sbin HOME=/root
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mkdir -p /dev/pts /dev/shm
mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /tmp
mount -t tmpfs tmpfs /run
echo /sbin/modprobe > /proc/sys/kernel/modprobe
hostname tsvisor

tty=
dhcp=
root=
share=
for word in $(cat /proc/cmdline); do
  case "$word" in
    tsvisor.marker=*) echo "\${word#tsvisor.marker=}" ;;
    tsvisor.console=*) tty="\${word#tsvisor.console=}" ;;
    tsvisor.dhcp=*) dhcp="\${word#tsvisor.dhcp=}" ;;
    tsvisor.root=*) root="\${word#tsvisor.root=}" ;;
    tsvisor.share=*) share="\${word#tsvisor.share=}" ;;
    TERM=*) export "$word" ;;
  esac
done

# virtio-mmio devices are in the device tree; their drivers are modules.
if ls /sys/firmware/devicetree/base/soc 2>/dev/null | grep -q '^virtio_mmio@'; then
  modprobe virtio_mmio
  for alias in /sys/bus/virtio/devices/*/modalias; do
    [ -e "$alias" ] && modprobe -q "$(cat "$alias")"
  done
fi

# A system disk (tsvisor run --image): mount it; with no command, its own
# init (systemd) takes over the machine and brings the network up itself.
rootmode=rw
case "$root" in *,ro) root="\${root%,ro}"; rootmode=ro ;; esac
if [ -n "$root" ]; then
  n=0
  while [ ! -b "$root" ] && [ $n -lt 50 ]; do sleep 0.1; n=$((n + 1)); done
  mkdir -p /newroot
  if ! mount -t ext4 -o "$rootmode" "$root" /newroot; then
    echo "tsvisor init: cannot mount the root disk $root" >&2
    if [ -f ${ARGV_PATH} ]; then devmem 0x${FINISHER_ADDR.toString(16)} 32 $(( (1 << 16) | 0x3333 )); fi
    poweroff -f
  fi
fi

# Shared folders, inside the system disk when there is one (its command and
# its systemd see that tree, not this one).
prefix=
[ -n "$root" ] && prefix=/newroot
for s in $(echo "$share" | tr , ' '); do
  mkdir -p "$prefix\${s#*:}"
  mount -t virtiofs "\${s%%:*}" "$prefix\${s#*:}" || echo "tsvisor init: could not mount share \${s%%:*} at \${s#*:}" >&2
done

# The guest agent of tsvisor vm exec, when the VM has a vsock device and the image has the agent.
agent=
if [ -x /bin/tsvisor-agent ] && cat /sys/bus/virtio/devices/*/modalias 2>/dev/null | grep -q '^virtio:d00000013v'; then agent=1; fi
if [ -n "$agent" ] && { [ -z "$root" ] || [ -f ${ARGV_PATH} ]; }; then
  (cd /root && setsid /bin/tsvisor-agent </dev/null >/dev/null 2>&1 &)
fi

if [ -n "$root" ] && [ ! -f ${ARGV_PATH} ]; then
  umount /tmp
  for d in dev proc sys run; do mkdir -p /newroot/$d; mount --move /$d /newroot/$d; done
  # The agent goes along into the system disk: chrooted there now, it finds
  # itself at the root once switch_root has moved /newroot to / (and its
  # commands run in the Debian system, not in this initramfs).
  if [ -n "$agent" ] && cp /bin/tsvisor-agent /newroot/run/tsvisor-agent; then
    (cd /newroot && setsid chroot /newroot /run/tsvisor-agent </dev/null >/dev/null 2>&1 &)
  fi
  [ -n "$tty" ] && echo "tsvisor init: --console $tty: systemd starts a login on it" >&2
  exec switch_root /newroot /sbin/init
fi

ip link set lo up
if [ -n "$dhcp" ]; then
  mkdir -p /etc/udhcpc
  # udhcpc's hook (busybox networking/udhcp), where Debian's busybox looks
  # for it: it sets the address, the default route and resolv.conf.
  cat > /etc/udhcpc/default.script <<'EOF'
#!/bin/sh
case "$1" in
  deconfig) ip addr flush dev "$interface" 2>/dev/null; ip link set "$interface" up ;;
  bound|renew)
    ifconfig "$interface" "$ip" netmask "\${subnet:-255.255.255.0}" up
    for r in $router; do route add default gw "$r" dev "$interface" 2>/dev/null; break; done
    : > /etc/resolv.conf
    for d in $dns; do echo "nameserver $d" >> /etc/resolv.conf; done ;;
esac
exit 0
EOF
  chmod 755 /etc/udhcpc/default.script
  for ifc in $(echo "$dhcp" | tr , ' '); do
    ip link set "$ifc" up 2>/dev/null
    # Without -q udhcpc stays, in the background once it has the lease, and renews it (RFC 2131 4.4.5).
    udhcpc -i "$ifc" -s /etc/udhcpc/default.script -n -t 4 -T 1 >/dev/null 2>&1 || echo "tsvisor init: no DHCP answer on $ifc" >&2
  done
fi

if [ -n "$tty" ]; then
  # The driver registers the port while probing; give devtmpfs a moment.
  n=0
  while [ ! -c "/dev/$tty" ] && [ $n -lt 50 ]; do sleep 0.1; n=$((n + 1)); done
  if [ -c "/dev/$tty" ]; then exec </dev/$tty >/dev/$tty 2>&1; else echo "tsvisor init: no /dev/$tty; staying on the kernel console" >&2; tty=; fi
fi

finish() {
  # The command's last output may still sit in the tty's buffer (the 8250
  # driver's ring, sent as the UART's THR empties): the host stops the VM at
  # the finisher write, so wait until the port has sent it, on ttyS0 as on
  # hvc0 (busybox stty sets the mode with tcsetattr(TCSADRAIN), which waits).
  stty -echo -onlcr 2>/dev/null
  sync
  if [ "$1" -eq 0 ]; then value=0x5555; else value=$(( ($1 << 16) | 0x3333 )); fi
  devmem 0x${FINISHER_ADDR.toString(16)} 32 $value
  echo "tsvisor init: could not report exit status $1 through the finisher" >&2
  poweroff -f
}

# The command in the system disk, as root in a chroot with the kernel's
# file systems mounted and the network init brought up.
run_in_root() {
  for d in proc sys dev run tmp; do mkdir -p /newroot/$d; done
  mount -t proc proc /newroot/proc
  mount -t sysfs sysfs /newroot/sys
  mount -o bind /dev /newroot/dev
  mount -o bind /dev/pts /newroot/dev/pts
  mount -t tmpfs tmpfs /newroot/run
  mount -t tmpfs tmpfs /newroot/tmp
  if [ -s /etc/resolv.conf ]; then rm -f /newroot/etc/resolv.conf; cp /etc/resolv.conf /newroot/etc/resolv.conf; fi
  [ -f /newroot/etc/hostname ] && hostname "$(cat /newroot/etc/hostname)"
  run() { PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin chroot /newroot /bin/sh -c 'cd /root && exec "$@"' sh "$@"; }
  if [ -f ${STDIN_PATH} ]; then run "$@" < ${STDIN_PATH}; else run "$@"; fi
  status=$?
  umount /newroot/tmp /newroot/run /newroot/dev/pts /newroot/dev /newroot/sys /newroot/proc 2>/dev/null
  # Clean for the next boot: read-only before the VM stops (a process left running keeps it busy: sync then).
  mount -o remount,ro /newroot 2>/dev/null || sync
  finish $status
}

cd /root
if [ -f ${ARGV_PATH} ]; then
  # Output byte for byte (no CR before LF); input typed on a host terminal
  # is not echoed twice, and ^D from the host's end of input is end-of-file.
  stty -echo -onlcr 2>/dev/null
  # Sets "$@"; a fast-start guest waits here for its command (whose
  # fragment remounts a system disk read-write, cli/fast-start.ts).
  . ${ARGV_PATH}
  [ -n "$root" ] && run_in_root "$@"
  if [ -f ${STDIN_PATH} ]; then "$@" < ${STDIN_PATH}; else "$@"; fi
  finish $?
fi

echo
echo "tsvisor: busybox shell on $(uname -sr). Ctrl-A X leaves; poweroff ends the VM."
# busybox's own init runs the shell from here: it gives the shell a session
# with the console as its controlling terminal (job control, Ctrl-C), and
# it is what busybox's poweroff and reboot talk to (by signal to PID 1).
# Leaving the shell powers the VM off.
# On hvc0, init (PID 1, a session leader) took hvc0 as its controlling tty
# when it opened it above, so the shell takes it over with setsid -c
# (TIOCSCTTY with force); cttyhack would pick the kernel's console, ttyS0.
mkdir -p /etc
if [ -n "$tty" ]; then shell="setsid -c sh -l"; else shell="setsid cttyhack sh -l"; fi
cat > /etc/inittab <<EOF
$tty::once:/bin/sh -c "$shell; poweroff"
::ctrlaltdel:/bin/reboot
::shutdown:/bin/sync
EOF
exec /bin/busybox init
`;

#!/lifeboat/bin/busybox sh
# PID 1 of Lifeboat's rescue media (written by internal/rescue). It brings up the disks
# and the network, then runs the failback client, which writes a recovery point onto a
# disk; then it reboots into the restored OS. It reads its settings from the kernel's
# command line: lifeboat.server=URL lifeboat.token=TOKEN lifeboat.disk=NAME
# lifeboat.selftest=1. PID 1 must never exit (the kernel panics): every path ends in a
# reboot, a power-off or a loop.
bb=/lifeboat/bin/busybox
$bb mkdir -p /proc /sys /dev /run /tmp /etc /root
$bb mount -t proc proc /proc
$bb --install -s /lifeboat/bin
export PATH=/lifeboat/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root TERM=linux
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tmpfs -o mode=0755 tmpfs /run
mount -t tmpfs -o mode=1777 tmpfs /tmp
mkdir -m 0700 -p /run/lifeboat

# The consoles the kernel writes to (console=ttyS0,115200 console=tty0: the serial port
# and the screen). /dev/console is only the last one, so what an operator must see goes
# to each of them.
ttys=
for c in $(cat /sys/class/tty/console/active 2>/dev/null); do
	case "$c" in
	*[!A-Za-z0-9]*) ;;
	*) [ -c "/dev/$c" ] && ttys="$ttys /dev/$c" ;;
	esac
done
[ -n "$ttys" ] || ttys=/dev/console

# say prints a line on every console.
say() {
	for t in $ttys; do echo "$*" >"$t"; done 2>/dev/null
}

# run runs a command with its output on every console (its input stays the console)
# and sets rc to its exit status.
run() {
	{
		"$@"
		echo $? >/run/lifeboat/rc
	} 2>&1 | tee $ttys >/dev/null
	rc=$(cat /run/lifeboat/rc 2>/dev/null)
	[ -n "$rc" ] || rc=1
}

# Drivers for the disks and NICs of VMs and servers, from the modules of Debian's
# initrd (under /usr/lib/modules on Debian 12, /lib/modules before). A driver built
# into the kernel, or absent, is no error.
v=$(uname -r)
if [ ! -e "/lib/modules/$v" ] && [ -d "/usr/lib/modules/$v" ]; then
	mkdir -p /lib/modules && ln -s "/usr/lib/modules/$v" "/lib/modules/$v"
fi
for m in virtio_pci virtio_blk virtio_net virtio_scsi sd_mod ahci nvme e1000 e1000e; do
	modprobe "$m" 2>/dev/null || /sbin/modprobe -q "$m" 2>/dev/null || :
done

# The kernel command line. Globbing is off while it is split into words: a word is
# data, never a pattern.
server= token= disk= selftest=
set -f
for w in $(cat /proc/cmdline); do
	case "$w" in
	lifeboat.server=*) server=${w#lifeboat.server=} ;;
	lifeboat.token=*) token=${w#lifeboat.token=} ;;
	lifeboat.disk=*) disk=${w#lifeboat.disk=} ;;
	lifeboat.selftest=1) selftest=1 ;;
	esac
done
set +f
# The token goes to a private file: never into a command's argv.
tokenfile=
if [ -n "$token" ]; then
	(umask 077 && printf '%s\n' "$token" >/run/lifeboat/token) && tokenfile=/run/lifeboat/token
	token=
fi

# The network: DHCP on the first NIC that is not lo and gets a lease. NICs appear as
# their drivers bind, so wait for one (10 s at most).
ip link set lo up
nics= i=0
while [ -z "$nics" ] && [ $i -lt 100 ]; do
	for d in /sys/class/net/*; do
		n=${d##*/}
		[ "$n" = lo ] || [ ! -e "$d" ] || nics="$nics $n"
	done
	[ -n "$nics" ] || { usleep 100000; i=$((i + 1)); }
done
nic=
for n in $nics; do
	ip link set "$n" up
	if udhcpc -i "$n" -n -q -t 5 -T 2 -s /lifeboat/udhcpc.script >/dev/null 2>&1; then
		nic=$n
		break
	fi
done
if [ -n "$nic" ]; then
	addr=$(ip -4 -o addr show dev "$nic" | awk '{print $4}')
	say "LIFEBOAT-RESCUE-READY nic=$nic addr=$addr"
else
	say "lifeboat rescue: no network: no NIC got a DHCP lease (NICs:${nics:- none})"
fi

if [ "$selftest" = 1 ]; then
	run /lifeboat/bin/lifeboat failback-client disks
	say "LIFEBOAT-RESCUE-SELFTEST-END rc=$rc"
	sync
	poweroff -f
	while :; do sleep 3600; done
fi

set -- /lifeboat/bin/lifeboat failback-client
[ -z "$server" ] || set -- "$@" --server "$server"
[ -z "$tokenfile" ] || set -- "$@" --token-file "$tokenfile"
[ -z "$disk" ] || set -- "$@" --disk "$disk"
if [ -n "$nic" ]; then
	run "$@"
else
	rc=1
fi
if [ "$rc" = 0 ]; then
	say "LIFEBOAT-RESCUE-REBOOT"
	sync
	reboot -f
	while :; do sleep 3600; done
fi
say "LIFEBOAT-RESCUE-FAILED rc=$rc"
say "lifeboat rescue: a shell on the console: to try again run: $*; to restart: reboot -f"
while :; do
	setsid cttyhack sh
	sleep 1
done

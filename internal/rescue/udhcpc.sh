#!/lifeboat/bin/busybox sh
# udhcpc's hook on Lifeboat's rescue media (written by internal/rescue): it applies the
# lease udhcpc got (address, default route, DNS servers) to $interface. What the DHCP
# server sent is data: globbing is off.
set -f
case "$1" in
deconfig)
	ip addr flush dev "$interface"
	ip link set "$interface" up
	;;
bound | renew)
	ip addr flush dev "$interface"
	ip addr add "$ip/${mask:-24}" dev "$interface"
	if [ -n "$router" ]; then
		ip route del default 2>/dev/null
		ip route add default via "${router%% *}" dev "$interface"
	fi
	if [ -n "$dns" ]; then
		: >/etc/resolv.conf
		[ -z "$domain" ] || echo "search $domain" >>/etc/resolv.conf
		for s in $dns; do echo "nameserver $s" >>/etc/resolv.conf; done
	fi
	;;
esac
exit 0

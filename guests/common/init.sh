#!/bin/sh
# PID 1 of the multidevs-harness guest.  Everything the host needs to know comes from
# the kernel command line, so one cached image serves every test:
#   mdh_9p=TAG:MOUNTPOINT:OPTS   mount 9p export TAG (OPTS comma-separated), repeatable
#   mdh_net=0                    skip networking (the liveness probe needs none)
# The host waits for the "MDH-READY" line on the serial console, then for SSH.

export PATH=/bin:/sbin:/usr/bin:/usr/sbin
say() { echo "mdh-init: $*" > /dev/console; }

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts /tmp /run /var/run /root
mount -t devpts devpts /dev/pts
mount -t tmpfs -o mode=1777 tmpfs /tmp

cmdline=$(cat /proc/cmdline)
net=1
for item in $cmdline; do
    case "$item" in mdh_net=0) net=0 ;; esac
done

# Modules come from the recipe in dependency order (resolved from modules.dep at
# build time); a kernel with them built in makes insmod fail harmlessly.
while read -r module; do
    [ -n "$module" ] || continue
    insmod "/lib/modules/$module" 2>/dev/null || true
done < /etc/mdh/modules

if [ "$net" = 1 ]; then
    # The link first: carrier takes ~0.9 s (linkwatch) and comes up while we mount.
    ip link set lo up
    ip link set eth0 up || say "no eth0: is virtio_net in the image?"
    ip addr add 10.0.2.15/24 dev eth0
fi

grep -qw 9p /proc/filesystems || say "ERROR: kernel has no 9p filesystem"
for item in $cmdline; do
    case "$item" in
    mdh_9p=*)
        spec=${item#mdh_9p=}
        tag=${spec%%:*}
        rest=${spec#*:}
        point=${rest%%:*}
        opts=${rest#*:}
        [ "$opts" = "$rest" ] && opts=trans=virtio
        mkdir -p "$point"
        if mount -t 9p -o "$opts" "$tag" "$point"; then
            say "mounted 9p $tag at $point"
        else
            say "ERROR: mount -t 9p -o $opts $tag $point failed"
        fi
        ;;
    esac
done

if [ "$net" = 1 ]; then
    ip route add default via 10.0.2.2
    # Key authentication only: -s and -g refuse every password login.
    dropbear -s -g -j -k -p 22 -r /etc/dropbear/host_key -P /run/dropbear.pid
    # Ready means listening, not merely started: poll for the LISTEN socket on :22.
    n=0
    until grep -q ':0016 00000000:0000 0A' /proc/net/tcp /proc/net/tcp6 2>/dev/null; do
        n=$((n + 1))
        [ $n -gt 2000 ] && { say "ERROR: dropbear is not listening"; break; }
        usleep 5000
    done
fi
echo "MDH-READY $(uname -r)" > /dev/console

# PID 1 must never exit (that panics the kernel); reap orphans while we wait.
while :; do
    wait
    sleep 3600
done

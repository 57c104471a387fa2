#!/bin/sh
# PID 1 of the multidevs-harness guest, shared by every recipe.  Everything the host
# needs to know comes from the kernel command line, so one cached image serves every
# test:
#   mdh_9p=TAG:MOUNTPOINT:OPTS   mount 9p export TAG (OPTS comma-separated), repeatable
#   mdh_vfs=TAG:MOUNTPOINT       mount virtiofs export TAG, repeatable
#
# Each step reports on the console in a form harness/bootlog.py parses:
#   mdh-init: step NAME ok [DETAIL]
#   mdh-init: step NAME fail DETAIL
# The last line is "MDH-READY <release>" when every step passed, or
# "MDH-FAILED <step>: <detail>" at the first failed step (nothing after it runs), so
# the host stops waiting at once and says why instead of timing out on SSH.

export PATH=/bin:/sbin:/usr/bin:/usr/sbin
say() { echo "mdh-init: $*" > /dev/console; }
ok() { say "step $1 ok${2:+ $2}"; }
fail() {
    say "step $1 fail $2"
    echo "MDH-FAILED $1: $2" > /dev/console
    # PID 1 must never exit (that panics the kernel and hides the reason).
    while :; do sleep 3600; done
}

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts /tmp /run /var/run /root
mount -t devpts devpts /dev/pts
mount -t tmpfs -o mode=1777 tmpfs /tmp
cmdline=$(cat /proc/cmdline)

# Modules in dependency order, computed at build time; built-in ones are not listed,
# so every failure here is real (wrong kernel, bad module) and must stop the boot.
count=0
while read -r module; do
    [ -n "$module" ] || continue
    if ! err=$(insmod "/lib/modules/$module" 2>&1); then
        # The kernel's reason (version magic, section size, ...) is in its log even
        # when 'quiet' keeps it off the console: put it right before the verdict.
        dmesg | tail -n 3 > /dev/console
        fail modules "insmod $module: ${err:-failed}"
    fi
    count=$((count + 1))
done < /etc/mdh/modules
ok modules "$count loaded"

# The link first: carrier takes ~0.9 s (linkwatch) and comes up while we mount.
ip link set lo up || fail net "ip link set lo up"
err=$(ip link set eth0 up 2>&1) || fail net "no eth0 (virtio_net missing?): $err"
err=$(ip addr add 10.0.2.15/24 dev eth0 2>&1) || fail net "ip addr add: $err"

grep -qw 9p /proc/filesystems || fail 9p "kernel has no 9p filesystem"
mounted=0
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
        err=$(mount -t 9p -o "$opts" "$tag" "$point" 2>&1) ||
            fail 9p "mount -t 9p -o $opts $tag $point: ${err:-failed}"
        mounted=$((mounted + 1))
        ;;
    esac
done
ok 9p "$mounted mounted"

# virtiofs exports (vhost-user-fs devices): only where the command line names some, so
# a 9p guest never depends on the fuse and virtiofs modules.
mounted=0
for item in $cmdline; do
    case "$item" in
    mdh_vfs=*)
        grep -qw virtiofs /proc/filesystems ||
            fail virtiofs "kernel has no virtiofs filesystem (fuse, virtiofs modules missing?)"
        spec=${item#mdh_vfs=}
        tag=${spec%%:*}
        point=${spec#*:}
        mkdir -p "$point"
        err=$(mount -t virtiofs "$tag" "$point" 2>&1) ||
            fail virtiofs "mount -t virtiofs $tag $point: ${err:-failed}"
        mounted=$((mounted + 1))
        ;;
    esac
done
[ $mounted -eq 0 ] || ok virtiofs "$mounted mounted"

err=$(ip route add default via 10.0.2.2 2>&1) || fail net "ip route add: $err"
ok net "eth0 10.0.2.15/24"

# Key authentication only: -s and -g refuse every password login.
# (stderr to a file, not $(...): the daemon could keep a captured pipe open.)
dropbear -s -g -j -k -p 22 -r /etc/dropbear/host_key -P /run/dropbear.pid 2>/run/dropbear.err ||
    fail sshd "dropbear: $(cat /run/dropbear.err)"
# Ready means listening, not merely started: poll for the LISTEN socket on :22.
n=0
until grep -q ':0016 00000000:0000 0A' /proc/net/tcp /proc/net/tcp6 2>/dev/null; do
    n=$((n + 1))
    [ $n -gt 2000 ] && fail sshd "dropbear is not listening on :22 after 10 s"
    usleep 5000
done
ok sshd "listening on :22"
echo "MDH-READY $(uname -r)" > /dev/console

# PID 1 must never exit (that panics the kernel); reap orphans while we wait.
while :; do
    wait
    sleep 3600
done

#!/bin/bash
# Runs as PID 1 in the guest of `cargo xtask test --vm`, on the host's root (read-only 9p with a
# tmpfs overlay), after xtask/vm/init. Reads what to run from the results share, which the host
# wrote before booting:
#   run/tests  one test binary a line: NAME<TAB>EXECUTABLE<TAB>WORKING DIRECTORY
#   run/args   arguments for every binary, one a line (--test-threads=1, filters...)
#   run/env    KEY=VALUE a line, exported before the tests run
# and writes back NAME.out (the harness's stdout and stderr), NAME.rc (its exit code), lsm,
# kernel, dmesg, and done (last, so the host can tell a finished run from a crashed one). Then powers off.
R=/am-vm/results
say() { echo "am-vm: $*"; }
off() {
    sync
    echo o >/proc/sysrq-trigger
    sleep 60
}
trap off EXIT

mnt() { # TYPE DIR [OPTIONS]: mount unless something is mounted there already
    mkdir -p "$2"
    mountpoint -q "$2" || mount -t "$1" ${3:+-o "$3"} "$1" "$2" || say "cannot mount $1 at $2"
}
# A fresh /run (the host's sockets and pid files are not ours), and the kernel filesystems the
# daemon and the tests use: securityfs (the LSM list), tracefs (tracepoints), bpffs (pins),
# cgroup v2 (cgroup programs, exec's cgroups).
mnt tmpfs /run mode=0755
mnt devpts /dev/pts
mnt tmpfs /dev/shm mode=1777
mnt securityfs /sys/kernel/security
mnt tracefs /sys/kernel/tracing
mnt debugfs /sys/kernel/debug
mnt bpf /sys/fs/bpf
mnt cgroup2 /sys/fs/cgroup
[ -e /dev/fd ] || ln -s /proc/self/fd /dev/fd

ln -sf /proc/self/fd/0 /dev/stdin
ln -sf /proc/self/fd/1 /dev/stdout
ln -sf /proc/self/fd/2 /dev/stderr
mkdir -p /run/am-vm
ip link set lo up || say "cannot bring up lo"
hostname am-vm

uname -r >"$R/kernel"
cat /sys/kernel/security/lsm >"$R/lsm" 2>/dev/null
say "kernel $(uname -r), lsm=$(cat "$R/lsm")"

while IFS= read -r kv; do
    [ -n "$kv" ] && export "$kv"
done <"$R/run/env"
mapfile -t args <"$R/run/args"

while IFS=$'\t' read -r name exe cwd; do
    say "running $name"
    start=$SECONDS
    # Not through a pipe: processes a test leaves behind would hold it open. tail follows the
    # file (on tmpfs: tail's reads of a growing file over 9p fail with ENODATA) to the console,
    # so the console log has the output even if the guest dies, and stops when the harness exits.
    out=/run/am-vm/$name.out
    (cd "$cwd" && exec "$exe" "${args[@]}") </dev/null >"$out" 2>&1 &
    pid=$!
    tail -n +1 -s 0.5 -f --pid=$pid "$out" &
    tailpid=$!
    wait $pid
    rc=$?
    wait $tailpid
    cp "$out" "$R/$name.out"
    echo "$rc" >"$R/$name.rc"
    say "$name: exit $rc in $((SECONDS - start))s"
done <"$R/run/tests"
dmesg >"$R/dmesg" 2>&1
touch "$R/done"

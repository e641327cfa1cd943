#!/usr/bin/env bash
# A two-node Slurm cluster on this machine, on loopback, for tests of our sbatch scripts and submitit.
#   tools/local_slurm.sh start    install (Debian packages) if missing, configure and start; idempotent
#   tools/local_slurm.sh stop     stop the daemons
#   tools/local_slurm.sh status   show the nodes; exit status 0 only when n1 and n2 are both up
# Nodes n1 and n2 both run here (slurmd -N n1 / -N n2, NodeAddr 127.0.0.1); state lives in
# ${BCRDIST_SLURM_DIR:-/tmp/bcrdist-slurm}. Needs root (apt-get, munge key, /etc/hosts entries n1/n2).
set -euo pipefail
STATE=${BCRDIST_SLURM_DIR:-/tmp/bcrdist-slurm}
CONF_DIR=/etc/slurm
CONF=$CONF_DIR/slurm.conf

install() {
    if command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v munged >/dev/null \
        && command -v sbatch >/dev/null; then
        return
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq slurmctld slurmd slurm-client munge >/dev/null
}

configure() {
    mkdir -p "$STATE"/{ctld,log} "$CONF_DIR"
    local cpus
    cpus=$(nproc)
    cat > "$CONF.tmp" <<CONF
ClusterName=bcrdist-local
SlurmctldHost=$(hostname)(127.0.0.1)
SlurmctldPort=16817
SlurmUser=root
AuthType=auth/munge
StateSaveLocation=$STATE/ctld
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdSpoolDir=$STATE/spool-%n
SlurmdPidFile=$STATE/slurmd-%n.pid
SlurmdLogFile=$STATE/log/slurmd-%n.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
ReturnToService=2
MpiDefault=none
SlurmdParameters=config_overrides
SlurmctldTimeout=30
SlurmdTimeout=60
InactiveLimit=0
KillWait=10
MinJobAge=300
JobRequeue=1
NodeName=n[1-2] NodeHostname=$(hostname) NodeAddr=127.0.0.1 Port=17001-17002 CPUs=$cpus State=UNKNOWN
PartitionName=debug Nodes=n[1-2] Default=YES MaxTime=INFINITE State=UP OverSubscribe=YES
CONF
    mv "$CONF.tmp" "$CONF"
    # the node names must resolve (the rendezvous address is the first host of the job's node list)
    grep -qE '^127\.0\.0\.1[[:space:]].*\bn1\b' /etc/hosts || echo "127.0.0.1 n1 n2" >> /etc/hosts
    if [ ! -s /etc/munge/munge.key ]; then
        mkdir -p /etc/munge
        dd if=/dev/urandom bs=1024 count=1 of=/etc/munge/munge.key status=none
    fi
    chown munge:munge /etc/munge/munge.key 2>/dev/null || true
    chmod 400 /etc/munge/munge.key
    mkdir -p /run/munge /var/log/munge /var/lib/munge
    chown -R munge:munge /run/munge /var/log/munge /var/lib/munge /etc/munge 2>/dev/null || true
}

running() { pgrep -f "$1" >/dev/null 2>&1; }

# both nodes answer (idle, mixed or allocated)
up() { [ "$(sinfo -h -N -o '%N %t' 2>/dev/null | grep -cE '^n[12] (idle|mix|alloc)')" = "2" ]; }

start() {
    install
    configure
    running "munged" || su -s /bin/sh munge -c "/usr/sbin/munged" 2>/dev/null || /usr/sbin/munged --force
    running "slurmctld" || slurmctld
    running "slurmd -N n1" || slurmd -N n1
    running "slurmd -N n2" || slurmd -N n2
    for _ in $(seq 1 60); do
        if up; then
            echo "local Slurm up: nodes n1 n2 ($STATE)"
            return 0
        fi
        scontrol update nodename=n[1-2] state=resume >/dev/null 2>&1 || true
        sleep 1
    done
    echo "local Slurm did not come up; see $STATE/log" >&2
    sinfo -N >&2 || true
    return 1
}

# stop one daemon by its pid file (written by the daemon itself), waiting for it to exit
stop_pidfile() {
    local pid
    [ -s "$1" ] || return 0
    pid=$(cat "$1")
    kill "$pid" 2>/dev/null || return 0
    for _ in $(seq 1 50); do
        kill -0 "$pid" 2>/dev/null || return 0
        sleep 0.2
    done
    kill -9 "$pid" 2>/dev/null || true
}

stop() {
    scancel --user=root >/dev/null 2>&1 || true
    stop_pidfile "$STATE/slurmd-n1.pid"
    stop_pidfile "$STATE/slurmd-n2.pid"
    stop_pidfile "$STATE/slurmctld.pid"
    echo "local Slurm stopped"
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    status) sinfo -N && up ;;
    *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac

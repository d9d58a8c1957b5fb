#!/usr/bin/env bash
# Start a single-node SLURM cluster on this machine (for tests/test_slurm.py).
#
#   sudo ci/slurm/start-cluster.sh      # installs, configures and starts; ~15 s the first time
#   sudo ci/slurm/stop-cluster.sh       # stops the daemons by their pid files
#
# Needs root and apt (Debian 12: Slurm 22.05). Works without systemd: munged,
# slurmctld and slurmd are started directly and tracked by pid files in
# /run/slurm and /run/munge. Idempotent: exits 0 at once when the cluster
# already answers with its node idle; starts only the daemons that are down.
#
# Environment (all optional):
#   SLURM_CI_NODE      node name given to slurmd -N (default ci-node)
#   SLURM_CI_TIMEOUT   seconds to wait for the node to become idle (default 60)
#   SLURM_CI_NO_INSTALL=1  never call apt-get (fail if the packages are missing)
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
NODE="${SLURM_CI_NODE:-ci-node}"
TIMEOUT="${SLURM_CI_TIMEOUT:-60}"
CONF=/etc/slurm/slurm.conf
RUN_DIR=/run/slurm
LOG_DIR=/var/log/slurm
PACKAGES=(slurmctld slurmd slurm-client munge)

log() { echo "start-cluster: $*"; }
die() { echo "start-cluster: ERROR: $*" >&2; exit 1; }

[[ $(id -u) -eq 0 ]] || die "must run as root (try: sudo $0)"

alive() {  # alive PIDFILE: the pid file names a running process
    [[ -s $1 ]] && kill -0 "$(cat "$1")" 2>/dev/null
}

node_state() {  # the node's state as sinfo reports it, empty if slurmctld does not answer
    timeout 10 sinfo --noheader --nodes="$NODE" --format=%T 2>/dev/null | head -n1 || true
}

# --- already running? ------------------------------------------------------------------------
if command -v sinfo >/dev/null && alive /run/munge/munged.pid && alive "$RUN_DIR/slurmctld.pid" \
    && alive "$RUN_DIR/slurmd.pid" && [[ $(node_state) =~ ^(idle|mixed|allocated)$ ]]; then
    log "already running (node $NODE is $(node_state))"
    exit 0
fi

# --- packages ---------------------------------------------------------------------------------
missing=()
for exe in slurmctld slurmd sinfo munged; do
    command -v "$exe" >/dev/null || PATH="$PATH:/usr/sbin" command -v "$exe" >/dev/null || missing+=("$exe")
done
export PATH="$PATH:/usr/sbin:/sbin"
if ((${#missing[@]})); then
    [[ ${SLURM_CI_NO_INSTALL:-0} == 1 ]] && die "missing ${missing[*]} and SLURM_CI_NO_INSTALL=1"
    command -v apt-get >/dev/null || die "missing ${missing[*]} and no apt-get to install ${PACKAGES[*]}"
    log "installing ${PACKAGES[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt_install() { apt-get install -y -qq --no-install-recommends -o Dpkg::Use-Pty=0 "${PACKAGES[@]}" >/tmp/slurm-ci-apt.log 2>&1; }
    if ! apt_install; then
        apt-get update -qq >>/tmp/slurm-ci-apt.log 2>&1 || true
        apt_install || { tail -n 20 /tmp/slurm-ci-apt.log >&2; die "apt-get install ${PACKAGES[*]} failed (log: /tmp/slurm-ci-apt.log)"; }
    fi
fi

# --- munge ------------------------------------------------------------------------------------
install -d -o munge -g munge -m 0700 /etc/munge /var/lib/munge /var/log/munge
install -d -o munge -g munge -m 0755 /run/munge
if [[ ! -s /etc/munge/munge.key ]]; then
    log "creating /etc/munge/munge.key"
    mungekey --create --keyfile=/etc/munge/munge.key 2>/dev/null \
        || dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 status=none
fi
chown munge:munge /etc/munge/munge.key
chmod 0400 /etc/munge/munge.key
if ! alive /run/munge/munged.pid; then
    log "starting munged"
    rm -f /run/munge/munged.pid /run/munge/munge.socket.2*
    runuser -u munge -- munged || die "munged did not start (see /var/log/munge/munged.log)"
fi
for _ in $(seq 50); do munge -n </dev/null | unmunge >/dev/null 2>&1 && break; sleep 0.1; done
munge -n </dev/null | unmunge >/dev/null 2>&1 || die "munge does not work (see /var/log/munge/munged.log)"

# --- slurm.conf -------------------------------------------------------------------------------
cpus=$(nproc)
mem_total_mb=$(( $(awk '/^MemTotal:/ {print $2}' /proc/meminfo) / 1024 ))
# Leave 10% (at least 512 MB) to the system; slurmd refuses a node that claims more than it has.
reserve=$(( mem_total_mb / 10 > 512 ? mem_total_mb / 10 : 512 ))
real_mem=$(( mem_total_mb - reserve ))
install -d -m 0755 /etc/slurm
new_conf=$(sed -e "s|@NODE_NAME@|$NODE|g" -e "s|@CPUS@|$cpus|g" -e "s|@REAL_MEMORY_MB@|$real_mem|g" \
               -e "s|@RUN_DIR@|$RUN_DIR|g" -e "s|@LOG_DIR@|$LOG_DIR|g" "$HERE/slurm.conf.in")
if [[ ! -f $CONF ]] || [[ "$(cat "$CONF")" != "$new_conf" ]]; then
    log "writing $CONF (node $NODE: $cpus CPUs, $real_mem MB)"
    printf '%s\n' "$new_conf" >"$CONF"
    # A changed configuration needs fresh daemons.
    "$HERE/stop-cluster.sh" --slurm-only >/dev/null 2>&1 || true
fi
chmod 0644 "$CONF"
# Debian ships a cgroup.conf only as an example; with proctrack/linuxproc none is needed.

install -d -o slurm -g slurm -m 0755 "$RUN_DIR" "$LOG_DIR" /var/spool/slurmctld
install -d -o root -g root -m 0755 /var/spool/slurmd

# --- daemons ----------------------------------------------------------------------------------
if ! alive "$RUN_DIR/slurmctld.pid"; then
    log "starting slurmctld"
    rm -f "$RUN_DIR/slurmctld.pid"
    # -i: ignore a state file from an older configuration (jobs of a previous cluster)
    slurmctld -i || die "slurmctld did not start; last lines of $LOG_DIR/slurmctld.log:
$(tail -n 20 "$LOG_DIR/slurmctld.log" 2>/dev/null)"
fi
for _ in $(seq 100); do timeout 5 scontrol ping 2>/dev/null | grep -q UP && break; sleep 0.2; done
if ! alive "$RUN_DIR/slurmd.pid"; then
    log "starting slurmd -N $NODE"
    rm -f "$RUN_DIR/slurmd.pid"
    slurmd -N "$NODE" || die "slurmd did not start; last lines of $LOG_DIR/slurmd.log:
$(tail -n 20 "$LOG_DIR/slurmd.log" 2>/dev/null)"
fi

# --- wait for the node ------------------------------------------------------------------------
state=""
for ((i = 0; i < TIMEOUT * 2; i++)); do
    state=$(node_state)
    case $state in
        idle | mixed | allocated) break ;;
        down* | drain* | fail*)
            # ReturnToService=2 brings a registered node back, but a stale DOWN from an old state file may linger.
            scontrol update nodename="$NODE" state=resume >/dev/null 2>&1 || true ;;
    esac
    sleep 0.5
done
if ! [[ $state =~ ^(idle|mixed|allocated)$ ]]; then
    echo "start-cluster: ERROR: node $NODE not idle after ${TIMEOUT}s (state: '${state:-slurmctld not answering}')" >&2
    scontrol show node "$NODE" >&2 2>/dev/null || true
    echo "--- $LOG_DIR/slurmctld.log" >&2; tail -n 20 "$LOG_DIR/slurmctld.log" >&2 2>/dev/null || true
    echo "--- $LOG_DIR/slurmd.log" >&2; tail -n 20 "$LOG_DIR/slurmd.log" >&2 2>/dev/null || true
    exit 1
fi
log "cluster up: node $NODE is $state ($cpus CPUs, $real_mem MB); partition debug"

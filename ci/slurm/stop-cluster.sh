#!/usr/bin/env bash
# Stop the test cluster started by ci/slurm/start-cluster.sh: slurmd, slurmctld, then munged,
# each by its pid file (never by name). Idempotent; --slurm-only leaves munged running.
set -uo pipefail

RUN_DIR=/run/slurm
only_slurm=0
[[ ${1:-} == --slurm-only ]] && only_slurm=1
[[ $(id -u) -eq 0 ]] || { echo "stop-cluster: ERROR: must run as root" >&2; exit 1; }

stop() {  # stop NAME PIDFILE: SIGTERM, wait up to 15 s, then SIGKILL
    local name=$1 pidfile=$2 pid
    [[ -s $pidfile ]] || { echo "stop-cluster: $name: no pid file"; return 0; }
    pid=$(cat "$pidfile")
    if ! kill -0 "$pid" 2>/dev/null; then
        echo "stop-cluster: $name: not running (stale pid file)"; rm -f "$pidfile"; return 0
    fi
    kill -TERM "$pid"
    for _ in $(seq 150); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$pid" 2>/dev/null; then
        echo "stop-cluster: $name ($pid) ignored SIGTERM, killing"; kill -KILL "$pid" 2>/dev/null
    else
        echo "stop-cluster: $name ($pid) stopped"
    fi
    rm -f "$pidfile"
}

stop slurmd "$RUN_DIR/slurmd.pid"
stop slurmctld "$RUN_DIR/slurmctld.pid"
((only_slurm)) || stop munged /run/munge/munged.pid
exit 0

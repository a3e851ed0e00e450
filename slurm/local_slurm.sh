#!/usr/bin/env bash
# A real single-node Slurm on localhost (munged + slurmctld + slurmd), all state under one directory.
# The test suite uses it to submit real jobs; it also works on a laptop or a CI box to try `echo-megatron submit`.
#
#   slurm/local_slurm.sh start DIR   install slurm-wlm + munge if missing, configure, start, wait for an idle node
#   slurm/local_slurm.sh stop DIR    cancel this cluster's jobs, then stop exactly the daemons `start DIR` started
#   slurm/local_slurm.sh env DIR     print the `export SLURM_CONF=...` line that client commands need
#
# Needs root (the daemons run as root, munged as the `munge` user) and apt-get for the install step.
# DIR must be reachable by the `munge` user (the script makes DIR itself mode 755).
# Environment: LOCAL_SLURM_CPUS (CPUs of the node, default: nproc), LOCAL_SLURM_TIMEOUT (seconds to wait, 60).
set -euo pipefail

SCRIPT=local_slurm.sh
# shellcheck source=slurm/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

usage() {
  sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'
  exit 2
}

write_config() {
  local dir=$1 cpus=$2 ctld_port=$3 slurmd_port=$4
  cat >"$dir/slurm.conf" <<EOF
# Written by slurm/local_slurm.sh: a one-node cluster on localhost.
ClusterName=echolocal
SlurmctldHost=localhost
SlurmctldPort=$ctld_port
SlurmdPort=$slurmd_port
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
# cred_expire: a job step credential's lifetime, which is also how long a requeued job is held before it may
# start again (default 120 s). A requeued job released early (scontrol update StartTime=now) can meet its
# previous run's revoked credential and fail at launch; a short lifetime makes the hold itself short.
AuthInfo=socket=$dir/munge/munge.socket,cred_expire=10
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/filetxt
JobCompLoc=$dir/jobcomp.txt
MpiDefault=none
ReturnToService=2
KillWait=30
MinJobAge=3600
NodeName=localhost NodeAddr=127.0.0.1 CPUs=$cpus State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
EOF
}

wait_idle() {
  local dir=$1 timeout=$2 state=""
  local deadline=$((SECONDS + timeout))
  while [ "$SECONDS" -lt "$deadline" ]; do
    state=$(SLURM_CONF="$dir/slurm.conf" sinfo -h -n localhost -o %T 2>/dev/null || true)
    [ "$state" = "idle" ] && return 0
    sleep 0.5
  done
  die "node not idle after ${timeout}s (state '${state}'); logs: $dir/log/slurmctld.log, $dir/log/slurmd.log"
}

start() {
  local dir=$1
  install_packages
  mkdir -p "$dir"
  dir=$(cd "$dir" && pwd)
  [ ! -e "$dir/slurmctld.pid" ] || die "$dir already holds a local Slurm (stop it first: $0 stop $dir)"
  chmod 755 "$dir"
  mkdir -p "$dir/state" "$dir/spool" "$dir/log"
  local ports cpus=${LOCAL_SLURM_CPUS:-$(nproc)}
  ports=$(free_ports 2)
  # shellcheck disable=SC2086  # two words on purpose
  write_config "$dir" "$cpus" $ports
  start_munged "$dir"
  slurmctld -f "$dir/slurm.conf" || die "slurmctld did not start: $(tail -n 5 "$dir/log/slurmctld.log" 2>/dev/null)"
  slurmd -f "$dir/slurm.conf" -N localhost || die "slurmd did not start: $(tail -n 5 "$dir/log/slurmd.log" 2>/dev/null)"
  wait_idle "$dir" "${LOCAL_SLURM_TIMEOUT:-60}"
  echo "export SLURM_CONF=$dir/slurm.conf"
}

stop() {
  local dir=$1
  [ -d "$dir" ] || die "no such directory: $dir"
  dir=$(cd "$dir" && pwd)
  if our_pid "$dir/slurmctld.pid" "$dir" >/dev/null; then cancel_all_jobs "$dir"; fi
  stop_daemon slurmd "$dir/slurmd.pid" "$dir"
  stop_daemon slurmctld "$dir/slurmctld.pid" "$dir"
  stop_daemon munged "$dir/munge/munged.pid" "$dir"
}

[ $# -eq 2 ] || usage
case "$1" in
  start) start "$2" ;;
  stop) stop "$2" ;;
  env) echo "export SLURM_CONF=$(cd "$2" && pwd)/slurm.conf" ;;
  *) usage ;;
esac

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

die() {
  echo "local_slurm.sh: $*" >&2
  exit 1
}

usage() {
  sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'
  exit 2
}

have_slurm() {
  command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v sbatch >/dev/null &&
    command -v munged >/dev/null
}

# Install slurm-wlm + munge with apt-get. A policy-rc.d that forbids service starts keeps the packages'
# maintainer scripts from starting system daemons that this script would not know about.
install_packages() {
  have_slurm && return 0
  [ "$(id -u)" -eq 0 ] || die "slurm-wlm and munge are not installed and installing them needs root"
  command -v apt-get >/dev/null || die "slurm-wlm and munge are not installed and there is no apt-get to install them"
  local policy=/usr/sbin/policy-rc.d made_policy=0
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy"
    chmod 755 "$policy"
    made_policy=1
  fi
  local rc=0
  {
    DEBIAN_FRONTEND=noninteractive apt-get update -qq &&
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends slurm-wlm munge
  } >"${TMPDIR:-/tmp}/local_slurm_apt.log" 2>&1 || rc=$?
  [ "$made_policy" -eq 1 ] && rm -f "$policy"
  [ "$rc" -eq 0 ] || die "apt-get install slurm-wlm munge failed (log: ${TMPDIR:-/tmp}/local_slurm_apt.log): $(tail -n 3 "${TMPDIR:-/tmp}/local_slurm_apt.log")"
  have_slurm || die "slurm-wlm installed but slurmctld/slurmd/sbatch/munged are still not on PATH"
}

# Two free TCP ports on 127.0.0.1 (for slurmctld and slurmd), so several local clusters can coexist.
free_ports() {
  python3 - <<'EOF'
import socket
socks = [socket.socket() for _ in range(2)]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in socks))
EOF
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

start_munged() {
  local dir=$1
  mkdir -p "$dir/munge"
  dd if=/dev/urandom of="$dir/munge/munge.key" bs=1024 count=1 status=none
  chown -R munge:munge "$dir/munge"
  chmod 755 "$dir/munge"  # munged wants its socket directory world-executable
  chmod 400 "$dir/munge/munge.key"
  runuser -u munge -- test -x "$dir" || die "the munge user cannot enter $dir: choose a directory whose parents are world-executable"
  runuser -u munge -- munged --socket="$dir/munge/munge.socket" --key-file="$dir/munge/munge.key" \
    --pid-file="$dir/munge/munged.pid" --log-file="$dir/munge/munged.log" --seed-file="$dir/munge/munged.seed" ||
    die "munged did not start: $(tail -n 3 "$dir/munge/munged.log" 2>/dev/null)"
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
  ports=$(free_ports)
  # shellcheck disable=SC2086  # two words on purpose
  write_config "$dir" "$cpus" $ports
  start_munged "$dir"
  slurmctld -f "$dir/slurm.conf" || die "slurmctld did not start: $(tail -n 5 "$dir/log/slurmctld.log" 2>/dev/null)"
  slurmd -f "$dir/slurm.conf" -N localhost || die "slurmd did not start: $(tail -n 5 "$dir/log/slurmd.log" 2>/dev/null)"
  wait_idle "$dir" "${LOCAL_SLURM_TIMEOUT:-60}"
  echo "export SLURM_CONF=$dir/slurm.conf"
}

# The pid in FILE, if that process is alive and its command line mentions DIR (so it is ours).
our_pid() {
  local file=$1 dir=$2 pid
  [ -s "$file" ] || return 1
  pid=$(tr -dc '0-9' <"$file")
  [ -n "$pid" ] && [ -r "/proc/$pid/cmdline" ] || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" | grep -qF -- "$dir" || return 1
  echo "$pid"
}

stop_daemon() {
  local name=$1 file=$2 dir=$3 pid i
  pid=$(our_pid "$file" "$dir") || {
    rm -f "$file"
    return 0
  }
  kill -TERM "$pid" 2>/dev/null || true
  for i in $(seq 1 100); do
    [ -d "/proc/$pid" ] || break
    [ "$i" -eq 100 ] && {
      echo "local_slurm.sh: $name ($pid) ignored SIGTERM for 10 s, sending SIGKILL" >&2
      kill -KILL "$pid" 2>/dev/null || true
    }
    sleep 0.1
  done
  rm -f "$file"
}

stop() {
  local dir=$1
  [ -d "$dir" ] || die "no such directory: $dir"
  dir=$(cd "$dir" && pwd)
  if our_pid "$dir/slurmctld.pid" "$dir" >/dev/null; then
    local jobs=() i
    mapfile -t jobs < <(SLURM_CONF="$dir/slurm.conf" squeue -h -o %i 2>/dev/null || true)
    if [ "${#jobs[@]}" -gt 0 ]; then
      SLURM_CONF="$dir/slurm.conf" scancel --full "${jobs[@]}" 2>/dev/null || true
      # shellcheck disable=SC2034  # i counts tries
      for i in $(seq 1 80); do
        [ -z "$(SLURM_CONF="$dir/slurm.conf" squeue -h -o %i 2>/dev/null)" ] && break
        sleep 0.5
      done
    fi
  fi
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

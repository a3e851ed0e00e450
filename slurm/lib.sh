# shellcheck shell=bash
# Functions shared by local_slurm.sh (one node on localhost) and local_cluster.sh (two nodes in network
# namespaces): install the packages, start munged, find and stop a daemon this directory started.
# Sourced, not run; the sourcing script sets SCRIPT (its name, for messages) before it.

die() {
  echo "$SCRIPT: $*" >&2
  exit 1
}

have_slurm() {
  command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v sbatch >/dev/null &&
    command -v munged >/dev/null
}

# apt-get install PACKAGES. A policy-rc.d that forbids service starts keeps the packages' maintainer scripts
# from starting system daemons that the scripts would not know about.
apt_install() {
  [ "$(id -u)" -eq 0 ] || die "$* not installed, and installing them needs root"
  command -v apt-get >/dev/null || die "$* not installed, and there is no apt-get to install them"
  local policy=/usr/sbin/policy-rc.d made_policy=0 log="${TMPDIR:-/tmp}/local_slurm_apt.log"
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy"
    chmod 755 "$policy"
    made_policy=1
  fi
  local rc=0
  {
    DEBIAN_FRONTEND=noninteractive apt-get update -qq &&
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@"
  } >"$log" 2>&1 || rc=$?
  [ "$made_policy" -eq 1 ] && rm -f "$policy"
  [ "$rc" -eq 0 ] || die "apt-get install $* failed (log: $log): $(tail -n 3 "$log")"
}

# slurm-wlm + munge, unless they are there.
install_packages() {
  have_slurm && return 0
  apt_install slurm-wlm munge
  have_slurm || die "slurm-wlm installed but slurmctld/slurmd/sbatch/munged are still not on PATH"
}

# N free TCP ports on 127.0.0.1, so several local clusters can coexist.
free_ports() {
  python3 - "$1" <<'EOF'
import socket, sys
socks = [socket.socket() for _ in range(int(sys.argv[1]))]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in socks))
EOF
}

# munged as the `munge` user, with a fresh key, its socket and files under DIR/munge.
start_munged() {
  local dir=$1
  mkdir -p "$dir/munge"
  dd if=/dev/urandom of="$dir/munge/munge.key" bs=1024 count=1 status=none
  chown -R munge:munge "$dir/munge"
  chmod 755 "$dir/munge" # munged wants its socket directory world-executable
  chmod 400 "$dir/munge/munge.key"
  runuser -u munge -- test -x "$dir" || die "the munge user cannot enter $dir: choose a directory whose parents are world-executable"
  runuser -u munge -- munged --socket="$dir/munge/munge.socket" --key-file="$dir/munge/munge.key" \
    --pid-file="$dir/munge/munged.pid" --log-file="$dir/munge/munged.log" --seed-file="$dir/munge/munged.seed" ||
    die "munged did not start: $(tail -n 3 "$dir/munge/munged.log" 2>/dev/null)"
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

# SIGTERM the daemon whose pid FILE holds (if it is ours), SIGKILL after 10 s; remove FILE.
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
      echo "$SCRIPT: $name ($pid) ignored SIGTERM for 10 s, sending SIGKILL" >&2
      kill -KILL "$pid" 2>/dev/null || true
    }
    sleep 0.1
  done
  rm -f "$file"
}

# Cancel every job of the cluster whose slurm.conf is DIR/slurm.conf and wait (40 s at most) until none is left.
cancel_all_jobs() {
  local dir=$1 jobs=() i
  mapfile -t jobs < <(SLURM_CONF="$dir/slurm.conf" squeue -h -o %i 2>/dev/null || true)
  [ "${#jobs[@]}" -gt 0 ] || return 0
  SLURM_CONF="$dir/slurm.conf" scancel --full "${jobs[@]}" 2>/dev/null || true
  # shellcheck disable=SC2034  # i counts tries
  for i in $(seq 1 80); do
    [ -z "$(SLURM_CONF="$dir/slurm.conf" squeue -h -o %i 2>/dev/null)" ] && break
    sleep 0.5
  done
}

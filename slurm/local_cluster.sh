#!/usr/bin/env bash
# A two-node Slurm on one machine: node1 and node2 each in its own network namespace, with its own address,
# hostname and /etc/hosts, its own slurmd; one slurmctld and one munged on the host. Multi-node jobs run here
# as they do on a cluster (srun across hosts, torchrun rendezvous on the first node, gloo over the network).
#
#   slurm/local_cluster.sh start DIR          install slurm-wlm + munge if missing, build the network, start, wait for two idle nodes
#   slurm/local_cluster.sh stop DIR           cancel the jobs, stop the daemons, remove the namespaces, links and files start made
#   slurm/local_cluster.sh env DIR            print the `export SLURM_CONF=...` line that client commands need
#   slurm/local_cluster.sh exec DIR NODE CMD  run CMD on NODE (its network, hostname and /etc/hosts)
#   slurm/local_cluster.sh crash DIR NODE     lose NODE: cut its link, SIGKILL everything on it (slurmd, job steps)
#   slurm/local_cluster.sh revive DIR NODE    bring a crashed NODE back: link up, slurmd started, node idle again
#
# Needs root (network namespaces, the daemons) and apt-get for the install step (also of iproute2 if missing).
# DIR must be reachable by the `munge` user (the script makes DIR itself mode 755). Environment:
# LOCAL_CLUSTER_CPUS (CPUs per node, default: nproc), LOCAL_CLUSTER_TIMEOUT (seconds to wait for the nodes, 60),
# LOCAL_CLUSTER_NET (the /24 to use, e.g. 10.213.7; default: the first 10.213.N.0/24 this machine has no
# address or route in).
#
# Network (addresses on a /24 NET that only these namespaces and the host's controller link have; nothing is
# routed or forwarded anywhere else):
#
#   host netns: slurmctld, munged, NET.1 on link ecNNNNc ---+
#   netns echoNNNN-sw: bridge br0 ---------------------------+-- eth0 NET.11 in netns echoNNNN-node1 (slurmd -N node1)
#                                                            +-- eth0 NET.12 in netns echoNNNN-node2 (slurmd -N node2)
#
# The bridge sits in a namespace of its own so that the host's firewall (e.g. Docker's FORWARD policy DROP,
# applied to bridged traffic by br_netfilter) never sees the nodes' traffic. Each node's processes run in its
# network namespace, with /etc/netns/<netns>/{hosts,hostname} bound over /etc/ in a mount namespace of their
# own (as `ip netns exec` would) and the node's hostname in a UTS namespace of their own. Everything start
# creates is recorded, as it is created, in DIR/cluster.state; stop undoes exactly those entries, in reverse,
# and leaves only DIR/log (the daemons' logs).
set -euo pipefail

SCRIPT=local_cluster.sh
# shellcheck source=slurm/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

NODES=(node1 node2)

usage() {
  sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'
  exit 2
}

# ---- the record of what start created -------------------------------------------------------------------

record() { echo "$*" >>"$DIR/cluster.state"; }

# The cluster's names and addresses (written once by start): ID, NET, CTL_LINK, SW_NS, NODE_NS_<node>.
load_env() {
  [ -s "$DIR/cluster.env" ] || die "$DIR holds no local cluster (no $DIR/cluster.env)"
  # shellcheck disable=SC1091
  . "$DIR/cluster.env"
}

node_ns() {
  local var="NODE_NS_$1"
  [ -n "${!var:-}" ] || die "no node '$1' (nodes: ${NODES[*]})"
  echo "${!var}"
}

node_addr() {
  local i
  for i in "${!NODES[@]}"; do
    [ "${NODES[$i]}" = "$1" ] && echo "$NET.$((11 + i))" && return 0
  done
  die "no node '$1' (nodes: ${NODES[*]})"
}

# ---- network ------------------------------------------------------------------------------------------

# A /24 (as A.B.C) with no address or route on this machine.
pick_net() {
  if [ -n "${LOCAL_CLUSTER_NET:-}" ]; then
    echo "$LOCAL_CLUSTER_NET"
    return 0
  fi
  local c used
  used=$( (ip -4 -o addr show && ip -4 route show table all) 2>/dev/null)
  for c in $(seq 1 254); do
    grep -qF "10.213.$c." <<<"$used" || {
      echo "10.213.$c"
      return 0
    }
  done
  die "no free 10.213.N.0/24 on this machine: set LOCAL_CLUSTER_NET"
}

# True when /run/netns is a mount point (ip netns add makes it one the first time).
run_netns_mounted() { grep -qE '^[^ ]+ [^ ]+ [^ ]+ [^ ]+ /run/netns ' /proc/self/mountinfo; }

add_netns() {
  ip netns add "$1" || die "ip netns add $1 failed"
  record netns "$1"
  ip -n "$1" link set lo up
}

build_network() {
  [ -d /run/netns ] || record dir /run/netns
  run_netns_mounted || record mount /run/netns
  add_netns "$SW_NS"
  ip -n "$SW_NS" link add br0 type bridge
  ip -n "$SW_NS" link set br0 up
  # The controller's link: host end CTL_LINK (NET.1), switch end c0 on the bridge. Deleting the switch
  # namespace deletes the pair.
  ip link add "$CTL_LINK" type veth peer name c0 netns "$SW_NS" || die "ip link add $CTL_LINK failed"
  record link "$CTL_LINK"
  ip addr add "$NET.1/24" dev "$CTL_LINK"
  ip link set "$CTL_LINK" up
  ip -n "$SW_NS" link set c0 master br0 up
  local node ns
  for node in "${NODES[@]}"; do
    ns=$(node_ns "$node")
    add_netns "$ns"
    ip -n "$SW_NS" link add "$node" type veth peer name eth0 netns "$ns"
    ip -n "$SW_NS" link set "$node" master br0 up
    ip -n "$ns" addr add "$(node_addr "$node")/24" dev eth0
    ip -n "$ns" link set eth0 up
    write_etc "$node" "$ns"
  done
}

# /etc/netns/<ns>/{hosts,hostname}: what the node's processes see as /etc/hosts and /etc/hostname. The hosts
# file is written as Debian/Ubuntu installers and cloud-init write it: the node's own name on 127.0.1.1, the
# other nodes on their addresses (the cluster's DNS, in effect). Every name resolves, but a program that binds
# to "the address of my hostname" gets the loopback, which the other nodes cannot reach: gloo does that.
write_etc() {
  local node=$1 ns=$2 n i
  if [ ! -d /etc/netns ]; then
    mkdir /etc/netns
    record dir /etc/netns
  fi
  mkdir "/etc/netns/$ns"
  record tree "/etc/netns/$ns"
  {
    echo "127.0.0.1 localhost"
    echo "$NET.1 slurmctld"
    for i in "${!NODES[@]}"; do
      n=${NODES[$i]}
      if [ "$n" = "$node" ]; then echo "127.0.1.1 $n"; else echo "$NET.$((11 + i)) $n"; fi
    done
  } >"/etc/netns/$ns/hosts"
  echo "$node" >"/etc/netns/$ns/hostname"
}

# Run CMD on NODE: in its network namespace, in a new mount namespace where its /etc/netns files are bound
# over /etc/hosts and /etc/hostname (as `ip netns exec` does; that one also remounts /sys, which would hide
# the cgroup filesystem slurmd needs), and in a new UTS namespace with the node's hostname.
on_node() {
  local node=$1 ns
  shift
  ns=$(node_ns "$node")
  # shellcheck disable=SC2016  # $1, $2 and $@ are the inner shell's
  unshare --mount --uts -- nsenter --net="/run/netns/$ns" -- /bin/sh -c '
    mount --bind "/etc/netns/$2/hosts" /etc/hosts || exit 1
    if [ -e /etc/hostname ]; then mount --bind "/etc/netns/$2/hostname" /etc/hostname || exit 1; fi
    echo "$1" >/proc/sys/kernel/hostname || exit 1
    shift 2
    exec "$@"' sh "$node" "$ns" "$@"
}

# Every process in NODE's network namespace.
node_pids() { ip netns pids "$(node_ns "$1")" 2>/dev/null || true; }

# ---- Slurm --------------------------------------------------------------------------------------------

write_config() {
  local cpus=$1 ctld_port=$2 i
  cat >"$DIR/slurm.conf" <<EOF
# Written by slurm/local_cluster.sh: two nodes, each in its own network namespace, on this machine.
ClusterName=echomulti
# "localhost" lets slurmctld accept this machine's hostname as the controller's; its address is the host end
# of the controller's link, which every node reaches through the bridge.
SlurmctldHost=localhost($NET.1)
SlurmctldPort=$ctld_port
SlurmdPort=6818
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
# cred_expire: see slurm/local_slurm.sh (a requeued job is held this long before it starts again).
AuthInfo=socket=$DIR/munge/munge.socket,cred_expire=10
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool/%n
SlurmctldPidFile=$DIR/run/slurmctld.pid
SlurmdPidFile=$DIR/run/slurmd-%n.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd-%n.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/filetxt
JobCompLoc=$DIR/jobcomp.txt
MpiDefault=none
# A node that stops answering is DOWN after SlurmdTimeout; its jobs end (NODE_FAIL) and requeue if they may.
# A DOWN node that registers again (revive) returns to service by itself.
SlurmdTimeout=10
ReturnToService=2
KillWait=10
MinJobAge=3600
# Look at pending jobs every 2 s (defaults 60 s and 30 s): a requeued job starts as soon as its hold is over.
SchedulerParameters=sched_interval=2,bf_interval=2
EOF
  for i in "${!NODES[@]}"; do
    echo "NodeName=${NODES[$i]} NodeAddr=$NET.$((11 + i)) NodeHostname=${NODES[$i]} CPUs=$cpus State=UNKNOWN"
  done >>"$DIR/slurm.conf"
  echo "PartitionName=debug Nodes=$(
    IFS=,
    echo "${NODES[*]}"
  ) Default=YES MaxTime=INFINITE State=UP" >>"$DIR/slurm.conf"
}

start_slurmd() {
  local node=$1
  mkdir -p "$DIR/spool/$node"
  on_node "$node" slurmd -f "$DIR/slurm.conf" -N "$node" ||
    die "slurmd on $node did not start: $(tail -n 5 "$DIR/log/slurmd-$node.log" 2>/dev/null)"
}

# Wait until every given node is in one of the states STATES (a |-separated list, e.g. idle|mixed).
wait_nodes() {
  local states=$1 timeout=$2 node state="" all
  shift 2
  local deadline=$((SECONDS + timeout))
  while [ "$SECONDS" -lt "$deadline" ]; do
    all=1
    for node in "$@"; do
      state=$(SLURM_CONF="$DIR/slurm.conf" sinfo -h -n "$node" -o %T 2>/dev/null || true)
      [[ "$state" =~ ^($states)$ ]] || all=0
    done
    [ "$all" -eq 1 ] && return 0
    sleep 0.5
  done
  die "nodes $* not $states after ${timeout}s (last state '${state}'); logs: $DIR/log/"
}

# ---- verbs --------------------------------------------------------------------------------------------

start() {
  [ "$(id -u)" -eq 0 ] || die "needs root (network namespaces and the Slurm daemons)"
  install_packages
  command -v ip >/dev/null || apt_install iproute2
  { command -v ip && command -v unshare && command -v nsenter; } >/dev/null ||
    die "needs ip (iproute2), unshare and nsenter (util-linux)"
  mkdir -p "$DIR"
  DIR=$(cd "$DIR" && pwd)
  [ ! -e "$DIR/cluster.state" ] || die "$DIR already holds a local cluster (stop it first: $0 stop $DIR)"
  chmod 755 "$DIR"
  : >"$DIR/cluster.state"
  trap 'echo "$SCRIPT: start failed; undoing what it did (logs stay in $DIR/log)" >&2; stop' EXIT
  local id
  while :; do
    id=$(printf '%04x' $((RANDOM % 65536)))
    [ -e "/run/netns/echo$id-sw" ] || ip link show "ec${id}c" >/dev/null 2>&1 || break
  done
  NET=$(pick_net)
  SW_NS="echo$id-sw"
  CTL_LINK="ec${id}c"
  {
    echo "ID=$id"
    echo "NET=$NET"
    echo "SW_NS=$SW_NS"
    echo "CTL_LINK=$CTL_LINK"
    local node
    for node in "${NODES[@]}"; do echo "NODE_NS_$node=echo$id-$node"; done
  } >"$DIR/cluster.env"
  load_env
  mkdir -p "$DIR/state" "$DIR/spool" "$DIR/log" "$DIR/run"
  build_network
  local port cpus=${LOCAL_CLUSTER_CPUS:-$(nproc)}
  port=$(free_ports 1)
  write_config "$cpus" "$port"
  start_munged "$DIR"
  slurmctld -f "$DIR/slurm.conf" || die "slurmctld did not start: $(tail -n 5 "$DIR/log/slurmctld.log" 2>/dev/null)"
  for node in "${NODES[@]}"; do start_slurmd "$node"; done
  wait_nodes idle "${LOCAL_CLUSTER_TIMEOUT:-60}" "${NODES[@]}"
  trap - EXIT
  echo "export SLURM_CONF=$DIR/slurm.conf"
}

# SIGTERM (then SIGKILL after 10 s) every process left in NODE's namespace: job processes slurmd left behind.
kill_node_processes() {
  local node=$1 pids i
  pids=$(node_pids "$node")
  [ -n "$pids" ] || return 0
  # shellcheck disable=SC2086  # a list of pids
  kill -TERM $pids 2>/dev/null || true
  for i in $(seq 1 100); do
    pids=$(node_pids "$node")
    [ -n "$pids" ] || return 0
    # shellcheck disable=SC2086
    [ "$i" -eq 100 ] && kill -KILL $pids 2>/dev/null
    sleep 0.1
  done
}

# Undo DIR/cluster.state, newest entry first.
undo_state() {
  local entries=() i kind what
  mapfile -t entries <"$DIR/cluster.state"
  for ((i = ${#entries[@]} - 1; i >= 0; i--)); do
    read -r kind what <<<"${entries[$i]}"
    case "$kind" in
      netns) [ ! -e "/run/netns/$what" ] || ip netns del "$what" || echo "$SCRIPT: ip netns del $what failed" >&2 ;;
      link) ! ip link show "$what" >/dev/null 2>&1 || ip link del "$what" ;;
      mount) [ -n "$(ls -A /run/netns 2>/dev/null)" ] || ! run_netns_mounted || umount /run/netns ;;
      tree) rm -rf -- "$what" ;;
      dir) rmdir -- "$what" 2>/dev/null || true ;; # only if empty: others may have put things there since
    esac
  done
}

stop() {
  [ -d "$DIR" ] || die "no such directory: $DIR"
  DIR=$(cd "$DIR" && pwd)
  [ -e "$DIR/cluster.state" ] || die "$DIR holds no local cluster (no $DIR/cluster.state)"
  if [ -s "$DIR/cluster.env" ]; then
    load_env
    if our_pid "$DIR/run/slurmctld.pid" "$DIR" >/dev/null; then cancel_all_jobs "$DIR"; fi
    local node
    for node in "${NODES[@]}"; do # the nodes side by side: a slurmd takes seconds to shut down
      (
        stop_daemon "slurmd ($node)" "$DIR/run/slurmd-$node.pid" "$DIR"
        [ ! -e "/run/netns/$(node_ns "$node")" ] || kill_node_processes "$node"
      ) &
    done
    wait
    stop_daemon slurmctld "$DIR/run/slurmctld.pid" "$DIR" &
    stop_daemon munged "$DIR/munge/munged.pid" "$DIR" &
    wait
  fi
  undo_state
  rm -rf -- "$DIR/state" "$DIR/spool" "$DIR/run" "$DIR/munge" "$DIR/slurm.conf" "$DIR/jobcomp.txt" \
    "$DIR/cluster.env" "$DIR/cluster.state"
}

crash() {
  local node=$1 ns pids i
  ns=$(node_ns "$node")
  # Cut the link first: the other nodes then see silence, as after a power cut, not closed connections.
  ip -n "$ns" link set eth0 down
  for i in $(seq 1 50); do
    pids=$(node_pids "$node")
    [ -n "$pids" ] || return 0
    # shellcheck disable=SC2086  # a list of pids
    kill -KILL $pids 2>/dev/null || true
    sleep 0.1
  done
  die "processes left on $node after SIGKILL: $(node_pids "$node" | tr '\n' ' ')"
}

revive() {
  local node=$1 ns
  ns=$(node_ns "$node")
  [ -z "$(node_pids "$node")" ] || die "$node is running (crash it first)"
  ip -n "$ns" link set eth0 up
  rm -f "$DIR/run/slurmd-$node.pid"
  start_slurmd "$node"
  wait_nodes "idle|mixed|allocated|completing" "${LOCAL_CLUSTER_TIMEOUT:-60}" "$node"
}

[ $# -ge 2 ] || usage
VERB=$1
DIR=$2
shift 2
case "$VERB" in
  start | stop) [ $# -eq 0 ] || usage ;;
  env) [ $# -eq 0 ] || usage ;;
  crash | revive) [ $# -eq 1 ] || usage ;;
  exec) [ $# -ge 2 ] || usage ;;
  *) usage ;;
esac
case "$VERB" in
  start) start ;;
  stop) stop ;;
  env) echo "export SLURM_CONF=$(cd "$DIR" && pwd)/slurm.conf" ;;
  *)
    DIR=$(cd "$DIR" && pwd)
    load_env
    case "$VERB" in
      crash) crash "$1" ;;
      revive) revive "$1" ;;
      exec) on_node "$@" ;;
    esac
    ;;
esac

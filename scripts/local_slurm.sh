#!/usr/bin/env bash
# A single-node SLURM cluster on this machine (root, Debian/Ubuntu, no systemd needed), to try the
# SLURM launcher and Lightning's pre-emption requeue without a real cluster.
#
#   sudo bash scripts/local_slurm.sh start     # install if needed, start munge/mariadb/slurm
#   sudo bash scripts/local_slurm.sh start --nodes 2   # two compute nodes, each a host of its own
#   sudo bash scripts/local_slurm.sh status    # sinfo + squeue
#   sudo bash scripts/local_slurm.sh logs      # the last lines of every daemon's log
#   sudo bash scripts/local_slurm.sh stop      # cancel jobs, stop the daemons
#   sudo bash scripts/local_slurm.sh purge     # stop and delete the state and generated configs
#
# Environment: LOCAL_SLURM_DIR (state, default /tmp/local_slurm), LOCAL_SLURM_ACCOUNTING=1|0
# (slurmdbd + MariaDB; without it submitit cannot see a job that died and waits forever),
# LOCAL_SLURM_CPUS (CPUs to declare, default nproc), LOCAL_SLURM_POLICY_RC (default
# /usr/sbin/policy-rc.d; tests point it elsewhere).
# The node is `localhost`, partition `debug`. Requeued jobs restart after ~10 s
# (cred_expire=10, bf_interval=5) instead of SLURM's default 120 s.
# A node whose slurmd stops answering is declared down after 20 s (SlurmdTimeout; default 300 s).
#
# `--nodes N` (2..9): nodes m2f-node1..N instead of localhost, each slurmd in its own network
# namespace (m2f-nodeK, address 10.77.0.1K on the bridge m2f-br0, where the controller and the
# submitting shell are 10.77.0.1) and its own UTS namespace (hostname m2f-nodeK), so a job step on
# node K sees node K's hostname and address. munge, the files (run folders, venv) and the
# controller are common. /etc/hosts gets one line per host (marked "# m2f-local-slurm"), so
# Lightning's MASTER_ADDR (the first host of SLURM_NODELIST) resolves on every node. `stop`
# removes the namespaces, the bridge and those lines. LOCAL_SLURM_CPUS is per node. Design and
# how to inspect it: docs/slurm_multinode.md. Only the namespaces' own addresses are ever used.
#
# Every failure ends with a "FAILED in step ..." line naming the step and the command. Sourcing
# the script only defines its functions (tests call one step at a time).
#
# Under `set -e`, `[[ cond ]] && cmd` as the last command of a function makes the function fail
# when cond is false (it once made `start` exit 1 silently wherever policy-rc.d already existed):
# write `if cond; then cmd; fi` instead.
set -Eeuo pipefail

D=${LOCAL_SLURM_DIR:-/tmp/local_slurm}
ACCOUNTING=${LOCAL_SLURM_ACCOUNTING:-1}
CPUS=${LOCAL_SLURM_CPUS:-$(nproc)}
CONF=/etc/slurm/slurm.conf
DBD_CONF=/etc/slurm/slurmdbd.conf
POLICY_RC=${LOCAL_SLURM_POLICY_RC:-/usr/sbin/policy-rc.d}
NODES=1 # --nodes N
NET_PREFIX=10.77.0
BRIDGE=m2f-br0
HOSTS_MARK="# m2f-local-slurm"
STEP="(none yet)"
TEMP_POLICY_RC="" # set while a policy-rc.d this script created exists

log() { echo "[local_slurm] $*"; }

step() {  # step DESCRIPTION: names what runs next, for the log and for the failure message
  STEP=$*
  log "$*"
}

on_error() {  # ERR trap: the failing step and command (once, from the top-level shell)
  local status=$1 line=$2 command=$3 file=${BASH_SOURCE[1]:-}
  if [[ $BASH_SUBSHELL -ne 0 ]]; then return 0; fi
  # a function that failed through `return N`: name the line that called it instead
  if [[ $command == return* && -r $file ]]; then
    command=$(sed -n "${line}{s/^[[:space:]]*//;p}" "$file")
  fi
  echo "[local_slurm] FAILED in step \"$STEP\": \`$command\` exited $status" \
    "(${file##*/} line $line); daemon logs: $D/log" >&2
}

on_exit() {
  if [[ -n $TEMP_POLICY_RC ]]; then rm -f "$TEMP_POLICY_RC"; fi
}

trap 'on_error $? $LINENO "$BASH_COMMAND"' ERR
trap on_exit EXIT

need_root() {
  if [[ $(id -u) -ne 0 ]]; then
    echo "local_slurm.sh must run as root (it starts system daemons)" >&2
    exit 1
  fi
}

installed() {  # installed PACKAGE: true when dpkg has it fully installed (not just config-files)
  [[ $(dpkg-query -W -f='${db:Status-Status}' "$1" 2>/dev/null || true) == installed ]]
}

install_packages() {
  local packages=(slurmctld slurmd slurm-client munge)
  if [[ $ACCOUNTING == 1 ]]; then packages+=(slurmdbd mariadb-server); fi
  local missing=()
  for p in "${packages[@]}"; do
    if ! installed "$p"; then missing+=("$p"); fi
  done
  if [[ ${#missing[@]} -eq 0 ]]; then return 0; fi
  # policy-rc.d exit 101: the packages' maintainer scripts must not start daemons themselves.
  # Docker's Debian images already have one (left alone); elsewhere one exists only during apt.
  if [[ ! -e $POLICY_RC ]]; then
    step "create a temporary $POLICY_RC"
    TEMP_POLICY_RC=$POLICY_RC
    printf '#!/bin/sh\nexit 101\n' >"$POLICY_RC"
    chmod +x "$POLICY_RC"
  fi
  # the lock timeout: wait for another apt/dpkg on this machine instead of failing at once
  local apt=(apt-get -o DPkg::Lock::Timeout=300)
  step "apt-get update"
  "${apt[@]}" update -qq
  step "apt-get install ${missing[*]}"
  DEBIAN_FRONTEND=noninteractive "${apt[@]}" install -y -qq --no-install-recommends "${missing[@]}"
  if [[ -n $TEMP_POLICY_RC ]]; then
    rm -f "$TEMP_POLICY_RC"
    TEMP_POLICY_RC=""
  fi
  return 0
}

wait_for() {  # wait_for SECONDS DESCRIPTION COMMAND...
  local seconds=$1 what=$2
  shift 2
  for _ in $(seq $((seconds * 2))); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    sleep 0.5
  done
  echo "timed out after ${seconds}s waiting for $what" >&2
  return 1
}

start_munge() {
  if munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then return 0; fi
  step "start munged"
  if [[ ! -f /etc/munge/munge.key ]]; then mungekey --create; fi
  chown -R munge:munge /etc/munge
  chmod 0700 /etc/munge
  chmod 0400 /etc/munge/munge.key
  # systemd-tmpfiles would make /run/munge; without systemd nothing does
  mkdir -p /run/munge
  chown munge:munge /run/munge
  chmod 0755 /run/munge
  runuser -u munge -- /usr/sbin/munged
  wait_for 10 munged bash -c 'munge -n | unmunge'
}

start_mariadb() {
  mkdir -p "$D/mysqlrun"
  chown mysql:mysql "$D/mysqlrun" # every path mariadbd writes must belong to mysql
  if [[ ! -d $D/mysql/mysql ]]; then
    step "initialise MariaDB in $D/mysql (log: $D/log/mariadb-install.log)"
    mariadb-install-db --user=mysql --datadir="$D/mysql" \
      --auth-root-authentication-method=socket >"$D/log/mariadb-install.log" 2>&1
  fi
  if ! mariadb-admin --socket="$D/mysqlrun/mysqld.sock" ping >/dev/null 2>&1; then
    step "start mariadbd (log: $D/mysqlrun/mariadb.err)"
    setsid nohup mariadbd --no-defaults --user=mysql --datadir="$D/mysql" \
      --socket="$D/mysqlrun/mysqld.sock" --pid-file="$D/mysqlrun/mysqld.pid" \
      --log-error="$D/mysqlrun/mariadb.err" --bind-address=127.0.0.1 --port=3306 \
      >/dev/null 2>&1 &
    wait_for 30 mariadbd mariadb-admin --socket="$D/mysqlrun/mysqld.sock" ping
  fi
  step "create the MariaDB user slurm"
  mariadb --socket="$D/mysqlrun/mysqld.sock" <<'SQL'
CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY 'slurm';
CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY 'slurm';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';
SQL
}

write_dbd_conf() {
  step "write $DBD_CONF"
  cat >"$DBD_CONF" <<EOF
AuthType=auth/munge
DbdHost=localhost
SlurmUser=root
PidFile=$D/run/slurmdbd.pid
LogFile=$D/log/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=3306
StorageUser=slurm
StoragePass=slurm
StorageLoc=slurm_acct_db
EOF
  chmod 0600 "$DBD_CONF"
}

write_slurm_conf() {
  step "write $CONF"
  local mem_mb
  mem_mb=$(awk '/MemTotal/ {printf "%d", $2 / 1024 * 0.9}' /proc/meminfo)
  if ((mem_mb > 8000)); then mem_mb=8000; fi
  local storage=accounting_storage/none gather=jobacct_gather/none
  if [[ $ACCOUNTING == 1 ]]; then
    storage=accounting_storage/slurmdbd
    gather=jobacct_gather/linux
  fi
  cat >"$CONF" <<EOF
ClusterName=localcluster
SlurmctldHost=$(controller_host)
SlurmUser=root
AuthType=auth/munge
AuthInfo=cred_expire=10
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SlurmdParameters=config_overrides
MailProg=/bin/true
MpiDefault=none
ReturnToService=2
SlurmdTimeout=20
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU_Memory
DefMemPerCPU=$((mem_mb / CPUS))
SchedulerParameters=bf_interval=5
AccountingStorageType=$storage
JobAcctGatherType=$gather
JobCompType=jobcomp/filetxt
JobCompLoc=$D/log/jobcomp.log
StateSaveLocation=$D/state
SlurmdSpoolDir=$D/spool
SlurmctldPidFile=$D/run/slurmctld.pid
SlurmdPidFile=$D/run/slurmd-%n.pid
SlurmctldLogFile=$D/log/slurmctld.log
SlurmdLogFile=$D/log/slurmd-%n.log
EOF
  local node
  for node in $(node_names); do
    echo "NodeName=$node NodeAddr=$(node_addr "$node") CPUs=$CPUS RealMemory=$mem_mb State=UNKNOWN"
  done >>"$CONF"
  echo "PartitionName=debug Nodes=$(node_names | paste -sd,) Default=YES MaxTime=INFINITE State=UP" \
    >>"$CONF"
}

node_names() {  # the compute nodes, one a line
  if [[ $NODES == 1 ]]; then
    echo localhost
  else
    seq -f "m2f-node%g" 1 "$NODES"
  fi
}

node_addr() {  # node_addr NODE: its address (the namespace's, on the bridge)
  if [[ $1 == localhost ]]; then echo 127.0.0.1; else echo "$NET_PREFIX.1${1#m2f-node}"; fi
}

controller_host() {  # SlurmctldHost: the bridge's address when the nodes live in namespaces
  if [[ $NODES == 1 ]]; then echo localhost; else echo "localhost($NET_PREFIX.1)"; fi
}

check_node_count() {  # a running cluster of another size is not reshaped under its jobs
  local running
  running=$(cat "$D/nodes" 2>/dev/null || echo 1)
  if [[ $running != "$NODES" ]] && pgrep -x slurmctld >/dev/null; then
    echo "a cluster of $running node(s) is running: \`$0 stop\` it before starting $NODES" >&2
    return 1
  fi
  return 0
}

start_network() {  # the bridge, one namespace per node joined to it by a veth pair, /etc/hosts
  step "make bridge $BRIDGE ($NET_PREFIX.1/24) and namespaces $(node_names | paste -sd' ')"
  if ! ip link show "$BRIDGE" >/dev/null 2>&1; then
    ip link add "$BRIDGE" type bridge
    ip addr add "$NET_PREFIX.1/24" dev "$BRIDGE"
  fi
  ip link set "$BRIDGE" up
  local node k
  for node in $(node_names); do
    k=${node#m2f-node}
    if [[ ! -e /run/netns/$node ]]; then ip netns add "$node"; fi
    if ! ip link show "m2f-veth$k" >/dev/null 2>&1; then
      ip link add "m2f-veth$k" type veth peer name eth0 netns "$node"
      ip link set "m2f-veth$k" master "$BRIDGE" up
      ip -n "$node" addr add "$(node_addr "$node")/24" dev eth0
    fi
    ip -n "$node" link set lo up
    ip -n "$node" link set eth0 up
  done
  step "add the hosts to /etc/hosts"
  remove_hosts_lines
  {
    echo "$NET_PREFIX.1 m2f-controller $HOSTS_MARK"
    for node in $(node_names); do echo "$(node_addr "$node") $node $HOSTS_MARK"; done
  } >>/etc/hosts
}

remove_hosts_lines() {  # /etc/hosts without this script's lines (rewritten in place: a bind mount)
  if grep -q "$HOSTS_MARK" /etc/hosts; then
    local kept
    kept=$(grep -v "$HOSTS_MARK" /etc/hosts)
    printf '%s\n' "$kept" >/etc/hosts
  fi
  return 0
}

stop_network() {  # the namespaces (their veth ends go with them), the bridge, the hosts lines
  local ns
  for ns in /run/netns/m2f-node*; do
    if [[ -e $ns ]]; then ip netns delete "${ns##*/}"; fi
  done
  if ip link show "$BRIDGE" >/dev/null 2>&1; then ip link delete "$BRIDGE"; fi
  remove_hosts_lines
}

slurmd_running() {  # slurmd_running NODE
  [[ -s $D/run/slurmd-$1.pid ]] && kill -0 "$(cat "$D/run/slurmd-$1.pid")" 2>/dev/null
}

start_slurmd() {  # start_slurmd NODE: localhost here; m2f-nodeK in its namespaces, named m2f-nodeK
  local node=$1
  if slurmd_running "$node"; then return 0; fi
  step "start slurmd $node (log: $D/log/slurmd-$node.log)"
  if [[ $node == localhost ]]; then
    slurmd -N localhost
  else
    # slurmd daemonizes inside the new UTS namespace: it and its job steps keep the hostname.
    # nsenter, not `ip netns exec`: that one mounts a new /sys, without /sys/fs/cgroup, and
    # slurmd then fails ("Unable to initialize cgroup plugin")
    nsenter --net="/run/netns/$node" unshare --uts \
      sh -c 'hostname "$1" && exec slurmd -N "$1"' sh "$node"
  fi
}

node_up() {  # node_up NODE: it takes jobs; resumes it when it registered down or drained
  local state
  state=$(sinfo -h -n "$1" -o %T 2>/dev/null || true)
  case $state in
    idle | mixed | allocated | completing) return 0 ;;
    down* | drain*) scontrol update nodename="$1" state=resume 2>/dev/null || true ;;
  esac
  return 1
}

start() {
  need_root
  install_packages
  step "make $D"
  mkdir -p "$D"/{log,run,state,spool} /etc/slurm
  check_node_count
  echo "$NODES" >"$D/nodes"
  if [[ $NODES != 1 ]]; then start_network; fi
  start_munge
  if [[ $ACCOUNTING == 1 ]]; then
    start_mariadb
    write_dbd_conf
    if ! pgrep -x slurmdbd >/dev/null; then
      step "start slurmdbd (log: $D/log/slurmdbd.log)"
      slurmdbd
      wait_for 30 "slurmdbd on port 6819" bash -c 'exec 3<>/dev/tcp/127.0.0.1/6819'
    fi
  fi
  write_slurm_conf
  if ! pgrep -x slurmctld >/dev/null; then
    step "start slurmctld (log: $D/log/slurmctld.log)"
    slurmctld
  fi
  local node
  for node in $(node_names); do start_slurmd "$node"; done
  if [[ $ACCOUNTING == 1 ]]; then
    sacctmgr -i add cluster localcluster >/dev/null 2>&1 || true # slurmctld registers it itself
  fi
  for node in $(node_names); do
    step "wait for node $node to take jobs"
    wait_for 60 "node $node to be idle (sinfo -n $node; logs in $D/log)" node_up "$node"
  done
  log "up: partition debug, nodes $(node_names | paste -sd,) ($CPUS CPUs each)," \
    "accounting=$ACCOUNTING, logs in $D/log"
}

stop_pidfile() {  # stop_pidfile FILE...
  local pids=()
  for f in "$@"; do
    if [[ -s $f ]]; then pids+=("$(cat "$f")"); fi
  done
  if [[ ${#pids[@]} -eq 0 ]]; then return 0; fi
  kill "${pids[@]}" 2>/dev/null || true
  for _ in $(seq 20); do
    kill -0 "${pids[@]}" 2>/dev/null || break
    sleep 0.5
  done
  kill -9 "${pids[@]}" 2>/dev/null || true
  rm -f "$@"
}

stop() {
  need_root
  step "stop the jobs and daemons"
  scancel --user=root 2>/dev/null || true
  stop_pidfile "$D"/run/slurmd*.pid "$D/run/slurmctld.pid"
  stop_pidfile "$D/run/slurmdbd.pid"
  stop_pidfile "$D/mysqlrun/mysqld.pid"
  pkill -x munged 2>/dev/null || true
  stop_network
  log "stopped"
}

purge() {
  stop
  step "delete $D and the generated configs"
  rm -rf "$D" "$CONF" "$DBD_CONF"
  log "purged $D and the generated configs"
}

status() {
  sinfo
  squeue
}

logs() {  # the last lines of each daemon's log, for a failure report
  local f
  for f in "$D"/log/*.log "$D/mysqlrun/mariadb.err"; do
    if [[ -f $f ]]; then
      echo "==> $f <=="
      tail -n "${LOCAL_SLURM_LOG_LINES:-30}" "$f"
    fi
  done
  return 0
}

main() {
  local command=${1:-}
  shift || true
  if [[ ${1:-} == --nodes ]]; then
    if [[ ! ${2:-} =~ ^[1-9]$ ]]; then
      echo "--nodes takes a count from 1 to 9, got '${2:-}'" >&2
      exit 2
    fi
    NODES=$2
  fi
  case $command in
    start) start ;;
    stop) stop ;;
    purge) purge ;;
    status) status ;;
    logs) logs ;;
    *)
      echo "usage: $0 {start [--nodes N]|status|logs|stop|purge}" >&2
      exit 2
      ;;
  esac
}

# sourced (the tests): define the functions only
if [[ ${BASH_SOURCE[0]} != "$0" ]]; then return 0; fi
main "$@"

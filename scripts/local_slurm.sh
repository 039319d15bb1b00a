#!/usr/bin/env bash
# A single-node SLURM cluster on this machine (root, Debian/Ubuntu, no systemd needed), to try the
# SLURM launcher and Lightning's pre-emption requeue without a real cluster.
#
#   sudo bash scripts/local_slurm.sh start     # install if needed, start munge/mariadb/slurm
#   sudo bash scripts/local_slurm.sh status    # sinfo + squeue
#   sudo bash scripts/local_slurm.sh stop      # cancel jobs, stop the daemons
#   sudo bash scripts/local_slurm.sh purge     # stop and delete the state and generated configs
#
# Environment: LOCAL_SLURM_DIR (state, default /tmp/local_slurm), LOCAL_SLURM_ACCOUNTING=1|0
# (slurmdbd + MariaDB; without it submitit cannot see a job that died and waits forever),
# LOCAL_SLURM_CPUS (CPUs to declare, default nproc).
# The node is `localhost`, partition `debug`. Requeued jobs restart after ~10 s
# (cred_expire=10, bf_interval=5) instead of SLURM's default 120 s.
set -euo pipefail

D=${LOCAL_SLURM_DIR:-/tmp/local_slurm}
ACCOUNTING=${LOCAL_SLURM_ACCOUNTING:-1}
CPUS=${LOCAL_SLURM_CPUS:-$(nproc)}
CONF=/etc/slurm/slurm.conf
DBD_CONF=/etc/slurm/slurmdbd.conf

log() { echo "[local_slurm] $*"; }

need_root() {
  if [[ $(id -u) -ne 0 ]]; then
    echo "local_slurm.sh must run as root (it starts system daemons)" >&2
    exit 1
  fi
}

install_packages() {
  local packages=(slurmctld slurmd slurm-client munge)
  [[ $ACCOUNTING == 1 ]] && packages+=(slurmdbd mariadb-server)
  local missing=()
  for p in "${packages[@]}"; do
    dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
  done
  [[ ${#missing[@]} -eq 0 ]] && return
  log "installing ${missing[*]}"
  # policy-rc.d exit 101: the packages' maintainer scripts must not start daemons themselves
  local made_policy=0
  if [[ ! -e /usr/sbin/policy-rc.d ]]; then
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
    made_policy=1
  fi
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
  [[ $made_policy == 1 ]] && rm -f /usr/sbin/policy-rc.d
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
  if munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then return; fi
  [[ -f /etc/munge/munge.key ]] || mungekey --create
  chown -R munge:munge /etc/munge && chmod 0700 /etc/munge && chmod 0400 /etc/munge/munge.key
  mkdir -p /run/munge && chown munge:munge /run/munge && chmod 0755 /run/munge
  runuser -u munge -- /usr/sbin/munged
  wait_for 10 munged bash -c 'munge -n | unmunge'
}

start_mariadb() {
  mkdir -p "$D/mysqlrun" && chown mysql:mysql "$D/mysqlrun"
  if [[ ! -d $D/mysql/mysql ]]; then
    mariadb-install-db --user=mysql --datadir="$D/mysql" \
      --auth-root-authentication-method=socket >"$D/log/mariadb-install.log" 2>&1
  fi
  if ! mariadb-admin --socket="$D/mysqlrun/mysqld.sock" ping >/dev/null 2>&1; then
    setsid nohup mariadbd --no-defaults --user=mysql --datadir="$D/mysql" \
      --socket="$D/mysqlrun/mysqld.sock" --pid-file="$D/mysqlrun/mysqld.pid" \
      --log-error="$D/mysqlrun/mariadb.err" --bind-address=127.0.0.1 --port=3306 \
      >/dev/null 2>&1 &
    wait_for 30 mariadbd mariadb-admin --socket="$D/mysqlrun/mysqld.sock" ping
  fi
  mariadb --socket="$D/mysqlrun/mysqld.sock" <<'SQL'
CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY 'slurm';
CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY 'slurm';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';
SQL
}

write_dbd_conf() {
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
  local mem_mb
  mem_mb=$(awk '/MemTotal/ {printf "%d", $2 / 1024 * 0.9}' /proc/meminfo)
  ((mem_mb > 8000)) && mem_mb=8000
  local storage=accounting_storage/none gather=jobacct_gather/none
  if [[ $ACCOUNTING == 1 ]]; then
    storage=accounting_storage/slurmdbd
    gather=jobacct_gather/linux
  fi
  cat >"$CONF" <<EOF
ClusterName=localcluster
SlurmctldHost=localhost
SlurmUser=root
AuthType=auth/munge
AuthInfo=cred_expire=10
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SlurmdParameters=config_overrides
MailProg=/bin/true
MpiDefault=none
ReturnToService=2
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
SlurmdPidFile=$D/run/slurmd.pid
SlurmctldLogFile=$D/log/slurmctld.log
SlurmdLogFile=$D/log/slurmd.log
NodeName=localhost NodeAddr=127.0.0.1 CPUs=$CPUS RealMemory=$mem_mb State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
EOF
}

start() {
  need_root
  install_packages
  mkdir -p "$D"/{log,run,state,spool} /etc/slurm
  start_munge
  if [[ $ACCOUNTING == 1 ]]; then
    start_mariadb
    write_dbd_conf
    if ! pgrep -x slurmdbd >/dev/null; then
      slurmdbd
      wait_for 30 "slurmdbd on port 6819" bash -c 'exec 3<>/dev/tcp/127.0.0.1/6819'
    fi
  fi
  write_slurm_conf
  pgrep -x slurmctld >/dev/null || slurmctld
  pgrep -x slurmd >/dev/null || slurmd -N localhost
  if [[ $ACCOUNTING == 1 ]]; then
    sacctmgr -i add cluster localcluster >/dev/null 2>&1 || true
  fi
  for _ in $(seq 120); do
    state=$(sinfo -h -n localhost -o %T 2>/dev/null || true)
    case $state in
      idle | mixed | allocated) break ;;
      down* | drain*) scontrol update nodename=localhost state=resume 2>/dev/null || true ;;
    esac
    sleep 0.5
  done
  [[ $state == idle || $state == mixed || $state == allocated ]] || {
    echo "node localhost did not come up (state: '${state:-none}'); see $D/log" >&2
    exit 1
  }
  log "up: partition debug, node localhost ($CPUS CPUs), accounting=$ACCOUNTING, logs in $D/log"
}

stop_pidfile() {  # stop_pidfile FILE...
  local pids=()
  for f in "$@"; do
    [[ -f $f ]] && pids+=("$(cat "$f")")
  done
  [[ ${#pids[@]} -eq 0 ]] && return
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
  scancel --user=root 2>/dev/null || true
  stop_pidfile "$D/run/slurmd.pid" "$D/run/slurmctld.pid"
  stop_pidfile "$D/run/slurmdbd.pid"
  stop_pidfile "$D/mysqlrun/mysqld.pid"
  pkill -x munged 2>/dev/null || true
  log "stopped"
}

purge() {
  stop
  rm -rf "$D" "$CONF" "$DBD_CONF"
  log "purged $D and the generated configs"
}

status() {
  sinfo
  squeue
}

case ${1:-} in
  start) start ;;
  stop) stop ;;
  purge) purge ;;
  status) status ;;
  *)
    echo "usage: $0 {start|status|stop|purge}" >&2
    exit 2
    ;;
esac

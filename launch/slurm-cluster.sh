#!/usr/bin/env bash
# A one-node Slurm on this machine, for the tests (tests/slurm.rs) and for trying
# launch/slurm.sbatch by hand:
#   launch/slurm-cluster.sh start DIR   installs Debian's slurmd, slurmctld, slurm-client, munge
#                                       and libpmix-dev when missing, writes DIR/slurm.conf, starts munged,
#                                       slurmctld and slurmd, and waits until the node is idle
#   launch/slurm-cluster.sh stop DIR    stops them (the daemons started from DIR only)
# Then `export SLURM_CONF=DIR/slurm.conf` and sbatch, srun, squeue, scontrol talk to it.
# Everything the daemons write (state, spool, logs, the munge key and socket) stays in DIR.
# SLURM_TEST_PORT (default 6817) is slurmctld's port, slurmd takes the next one.
set -euo pipefail

usage() { echo "usage: $0 start|stop DIR" >&2; exit 2; }
[ $# -eq 2 ] || usage
action=$1
mkdir -p "$2"
dir=$(cd "$2" && pwd)
host=$(hostname -s)
port=${SLURM_TEST_PORT:-6817}

install_missing() {
  local need=()
  # libpmix-dev: srun --mpi=pmix (the OpenMPI build) dlopens its unversioned libpmix.so,
  # and slurmd only offers the plugin when that loads at its start.
  for pkg in slurmd slurmctld slurm-client munge libpmix-dev; do
    dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
  done
  [ ${#need[@]} -eq 0 ] && return 0
  echo "slurm-cluster: installing ${need[*]} from Debian" >&2
  local sudo=""; [ "$(id -u)" -ne 0 ] && sudo=sudo
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need[@]}" >/dev/null
}

write_config() {
  local cpus mem
  cpus=$(nproc)
  # Slurm refuses a node that reports less memory than configured: claim 3/4 of it.
  mem=$(awk '/MemTotal/ {print int($2 / 1024 * 3 / 4)}' /proc/meminfo)
  mkdir -p "$dir/state" "$dir/spool" "$dir/munge"
  cat >"$dir/slurm.conf" <<EOF
# Written by launch/slurm-cluster.sh: one node, this machine, everything under $dir.
ClusterName=trainer-test
SlurmctldHost=$host
SlurmctldPort=$port
SlurmdPort=$((port + 1))
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$dir/munge/munge.socket
SlurmUser=root
SlurmdUser=root
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/slurmctld.log
SlurmdLogFile=$dir/slurmd.log
# No cgroups in a container: processes are tracked by their parent pids.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
# Requeued jobs (scontrol requeue, preemption, the script's own requeue) may run again.
JobRequeue=1
MpiDefault=none
ReturnToService=2
# Finished jobs stay visible to scontrol for 5 minutes (the tests read their state).
MinJobAge=300
KillWait=30
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
NodeName=$host CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=main Nodes=$host Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE:4
EOF
}

start_munge() {
  if [ ! -f "$dir/munge/munge.key" ]; then
    dd if=/dev/urandom of="$dir/munge/munge.key" bs=1024 count=1 status=none
    chmod 0400 "$dir/munge/munge.key"
  fi
  # --force: munged runs as root here and its directory is not /etc/munge.
  munged --force --key-file="$dir/munge/munge.key" --socket="$dir/munge/munge.socket" \
    --pid-file="$dir/munge/munged.pid" --log-file="$dir/munge/munged.log" --seed-file="$dir/munge/munged.seed"
}

wait_idle() {
  local i
  for i in $(seq 1 60); do
    if grep -qx idle <<<"$(SLURM_CONF=$dir/slurm.conf sinfo -h -N -o '%t' 2>/dev/null)"; then
      return 0
    fi
    sleep 0.5
  done
  echo "slurm-cluster: the node never became idle; see $dir/slurmctld.log and $dir/slurmd.log" >&2
  SLURM_CONF=$dir/slurm.conf sinfo -N >&2 || true
  return 1
}

stop_pidfile() {
  local file=$1 pid i
  [ -f "$file" ] || return 0
  pid=$(cat "$file")
  if [ -n "$pid" ] && kill "$pid" 2>/dev/null; then
    for i in $(seq 1 50); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    kill -9 "$pid" 2>/dev/null || true
  fi
  rm -f "$file"
}

case "$action" in
  start)
    install_missing
    write_config
    start_munge
    slurmctld -f "$dir/slurm.conf"
    slurmd -f "$dir/slurm.conf"
    wait_idle
    echo "slurm-cluster: up (export SLURM_CONF=$dir/slurm.conf)" >&2
    ;;
  stop)
    if [ -f "$dir/slurmctld.pid" ]; then
      # This cluster's jobs first, so that no job step outlives its slurmd.
      SLURM_CONF=$dir/slurm.conf scancel --user="$(id -un)" 2>/dev/null || true
      for _ in $(seq 1 40); do
        [ -z "$(SLURM_CONF=$dir/slurm.conf squeue -h -t running,completing 2>/dev/null)" ] && break
        sleep 0.25
      done
    fi
    stop_pidfile "$dir/slurmd.pid"
    stop_pidfile "$dir/slurmctld.pid"
    stop_pidfile "$dir/munge/munged.pid"
    ;;
  *) usage ;;
esac

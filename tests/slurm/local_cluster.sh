#!/usr/bin/env bash
# A one-node SLURM cluster on this machine, for seqlab's SLURM tests and for trying the
# launcher (README.md, SLURM):
#
#   tests/slurm/local_cluster.sh up     # installs slurm-wlm and munge (apt) when missing,
#                                       # writes the config, starts munged, slurmctld, slurmd
#   eval "$(tests/slurm/local_cluster.sh env)"   # points sbatch, squeue, srun... at it
#   tests/slurm/local_cluster.sh down   # stops the three daemons
#
# Everything it writes (config, munge key and socket, state, spool, logs, pid files) lives
# under one directory, $SEQLAB_SLURM_DIR (default /tmp/seqlab-slurm). No systemd and no
# cgroups: proctrack/linuxproc, task/none. One node (this machine, its CPUs and memory) in
# one partition, 'debug'. Needs root (apt, and slurmd starts jobs as their user).
set -euo pipefail
DIR=${SEQLAB_SLURM_DIR:-/tmp/seqlab-slurm}
CONF=$DIR/slurm.conf
NODE=$(hostname -s)

env_lines() {
  echo "export SLURM_CONF=$CONF"
}

running() {  # the controller answers and the node is up (idle, mixed or allocated)
  [[ -f $CONF ]] && SLURM_CONF=$CONF timeout 10 sinfo -h -n "$NODE" -o %T 2>/dev/null \
    | grep -qE '^(idle|mixed|allocated|completing)'
}

install() {
  command -v slurmctld >/dev/null && command -v munged >/dev/null && return
  echo "local_cluster: installing slurm-wlm and munge (apt)" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q >/dev/null
  apt-get install -y -q --no-install-recommends slurm-wlm munge >/dev/null
}

write_config() {
  local cpus mem
  cpus=$(nproc)
  mem=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 * 9 / 10 ))  # MiB, 90%
  mkdir -p "$DIR"/{munge,state,spool,log}
  cat > "$CONF" <<CONF
# Written by tests/slurm/local_cluster.sh: a one-node cluster on $NODE.
ClusterName=seqlab
SlurmctldHost=$NODE(127.0.0.1)
SlurmUser=root
SlurmctldPort=${SEQLAB_SLURM_PORT:-6817}
SlurmdPort=$(( ${SEQLAB_SLURM_PORT:-6817} + 1 ))
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$DIR/munge/munge.socket
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU_Memory
DefMemPerCPU=$(( mem / cpus ))  # without it a job takes the whole node's memory
ReturnToService=2
# A cut-short job gets SIGTERM, then SIGKILL KillWait seconds later (seqlab saves at its
# next step, well within them).
KillWait=30
MinJobAge=60
SchedulerTimeSlice=5
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
CONF
}

start_munge() {
  [[ -f $DIR/munge/munge.key ]] || dd if=/dev/urandom of="$DIR/munge/munge.key" bs=1024 count=1 status=none
  chmod 700 "$DIR/munge"; chmod 400 "$DIR/munge/munge.key"
  if ! munge -n -S "$DIR/munge/munge.socket" >/dev/null 2>&1; then
    munged --force --key-file="$DIR/munge/munge.key" --socket="$DIR/munge/munge.socket" \
      --pid-file="$DIR/munge/munged.pid" --log-file="$DIR/log/munged.log" \
      --seed-file="$DIR/munge/munged.seed"
  fi
}

up() {
  if running; then echo "local_cluster: already up ($CONF)" >&2; return; fi
  install
  down quiet
  rm -rf "$DIR/state" "$DIR/spool"  # a fresh cluster: no jobs left from an earlier one
  write_config
  start_munge
  slurmctld -f "$CONF"
  slurmd -f "$CONF" -N "$NODE"
  for _ in $(seq 120); do
    if running; then
      echo "local_cluster: up: $(SLURM_CONF=$CONF sinfo -h -o '%P %D node(s) %c CPUs %m MB %T')" >&2
      return
    fi
    SLURM_CONF=$CONF scontrol update nodename="$NODE" state=resume >/dev/null 2>&1 || true
    sleep 0.5
  done
  echo "local_cluster: the node did not become idle in 60 s; logs in $DIR/log:" >&2
  tail -n 5 "$DIR"/log/*.log >&2 || true
  exit 1
}

stop_pid() {  # the daemon whose pid file is $1, waited for
  [[ -f $1 ]] || return 0
  local pid; pid=$(cat "$1")
  if kill "$pid" 2>/dev/null; then
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    kill -9 "$pid" 2>/dev/null || true
  fi
  rm -f "$1"
}

down() {
  stop_pid "$DIR/slurmd.pid"
  stop_pid "$DIR/slurmctld.pid"
  stop_pid "$DIR/munge/munged.pid"
  [[ ${1:-} == quiet ]] || echo "local_cluster: down" >&2
}

case ${1:-} in
  up) up ;;
  down) down ;;
  env) env_lines ;;
  *) echo "usage: $0 up|down|env (SEQLAB_SLURM_DIR, default /tmp/seqlab-slurm)" >&2; exit 2 ;;
esac

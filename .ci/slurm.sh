#!/usr/bin/env bash
# Run a command against a throwaway single-node SLURM on this machine, then tear SLURM down.
#
#   bash .ci/slurm.sh python -m pytest -m slurm tests/workflow/test_slurm.py -v
#
# Needs root and Debian/Ubuntu (apt). Installs slurmctld, slurmd, slurm-client and munge when
# missing, writes a slurm.conf for one node (localhost, all CPUs, MemTotal minus headroom, one fake
# GPU so that --gpus=1 requests are schedulable) into a temporary directory, starts munged,
# slurmctld and slurmd in the background, waits (bounded) until the node is idle, runs the command
# under `timeout -s KILL`, and on exit stops exactly the daemons it started. Exit status: the
# command's (137 when it was killed for running past SLURM_CI_TIMEOUT seconds, default 900).
# Background and the two pitfalls this script avoids: shared/notes/slurm-on-one-machine.md.
set -euo pipefail

TIMEOUT="${SLURM_CI_TIMEOUT:-900}"
PARTITION="${SLURM_CI_PARTITION:-ci}"   # the partition .ci/profiles/slurm-ci submits to
if [ $# -eq 0 ]; then
  echo "usage: $0 COMMAND [ARGS...]   (runs COMMAND with a single-node SLURM up)" >&2
  exit 2
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "$0: needs root (installs packages, starts slurmctld/slurmd/munged)" >&2
  exit 2
fi

log() { echo "[slurm.sh] $*" >&2; }

# -- 1. packages ------------------------------------------------------------------------------
pkgs=(slurmctld slurmd slurm-client munge)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  log "installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  timeout 300 apt-get update -qq
  timeout 600 apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# -- 2. configuration ---------------------------------------------------------------------------
ETC=/etc/slurm
for f in slurm.conf gres.conf; do
  # Never clobber a real configuration; a symlink left by an earlier (killed) run is replaced.
  if [ -e "$ETC/$f" ] && [ ! -L "$ETC/$f" ]; then
    log "$ETC/$f exists and is not a symlink from an earlier run of this script; refusing to replace it"
    exit 2
  fi
done

dir=$(mktemp -d /tmp/histoflow-slurm.XXXXXX)
pids=()      # the daemons this script started, stopped in reverse order on exit
cmd_pid=""   # the `timeout` running the command (leader of the command's process group)

cleanup() {
  local rc=$?
  set +e
  if [ -n "$cmd_pid" ] && kill -0 "$cmd_pid" 2>/dev/null; then
    kill -TERM "$cmd_pid" 2>/dev/null   # timeout passes it on to the command
    for _ in $(seq 50); do kill -0 "$cmd_pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL -- "-$cmd_pid" 2>/dev/null
  fi
  if [ ${#pids[@]} -gt 0 ] && command -v scancel >/dev/null; then
    # Jobs still running belong to this throwaway cluster only; their slurmstepd would outlive slurmd.
    timeout 10 scancel --quiet --partition "$PARTITION" 2>/dev/null
    for _ in $(seq 20); do
      [ -z "$(timeout 5 squeue -h -o %i 2>/dev/null)" ] && break
      sleep 0.5
    done
  fi
  for ((i = ${#pids[@]} - 1; i >= 0; i--)); do kill -TERM "${pids[i]}" 2>/dev/null; done
  for pid in "${pids[@]}"; do
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null
    wait "$pid" 2>/dev/null
  done
  for f in slurm.conf gres.conf; do
    [ "$(readlink "$ETC/$f" 2>/dev/null)" = "$dir/$f" ] && rm -f "$ETC/$f"
  done
  rm -rf "$dir"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

cpus=$(nproc)
mem_mb=$(awk '/^MemTotal:/ {print int($2 / 1024)}' /proc/meminfo)
headroom=$(( mem_mb / 10 > 1024 ? mem_mb / 10 : 1024 ))   # 10 % (at least 1 GiB) for the OS and daemons
real_mb=$(( mem_mb - headroom ))
mkdir -p "$dir"/{state,spool,log}

cat > "$dir/slurm.conf" <<EOF
# Written by .ci/slurm.sh: one node (this machine), no cgroups, no accounting.
ClusterName=histoflow-ci
SlurmctldHost=localhost
SlurmctldPort=6817
SlurmdPort=6818
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
GresTypes=gpu
MpiDefault=none
ReturnToService=2
# squeue must still list a finished job when the plugin's status query runs (pitfall 2).
MinJobAge=300
# Refuse at submission what the node can never run (else it pends forever, reason PartitionConfig).
EnforcePartLimits=ALL
DefMemPerCPU=1000
SchedulerType=sched/backfill
NodeName=localhost NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$real_mb Gres=gpu:1 State=UNKNOWN
PartitionName=$PARTITION Nodes=localhost Default=YES MaxTime=INFINITE State=UP
EOF
# A fake GPU so that --gpus=1 requests are schedulable; no CUDA device is behind it (slurmd reports a
# GPU without File= as count 0 and the node becomes INVAL, hence /dev/null).
echo "NodeName=localhost Name=gpu File=/dev/null Count=1" > "$dir/gres.conf"

# Pitfall 1: the jobstep plugin drops SLURM_CONF before its srun, so the default path must work.
mkdir -p "$ETC"
ln -sfn "$dir/slurm.conf" "$ETC/slurm.conf"
ln -sfn "$dir/gres.conf" "$ETC/gres.conf"

# -- 3. daemons ---------------------------------------------------------------------------------
if timeout 5 munge -n 2>/dev/null | timeout 5 unmunge >/dev/null 2>&1; then
  log "munged already running; using it"
else
  [ -s /etc/munge/munge.key ] || { timeout 30 mungekey --create --keyfile /etc/munge/munge.key; chown munge:munge /etc/munge/munge.key; chmod 400 /etc/munge/munge.key; }
  install -d -o munge -g munge -m 0755 /run/munge
  install -d -o munge -g munge -m 0700 /var/lib/munge /var/log/munge
  setpriv --reuid=munge --regid=munge --init-groups munged --foreground >"$dir/log/munged.out" 2>&1 &
  pids+=($!)
  for _ in $(seq 50); do
    timeout 5 munge -n 2>/dev/null | timeout 5 unmunge >/dev/null 2>&1 && break
    sleep 0.1
  done
fi

slurmctld -D >"$dir/log/slurmctld.out" 2>&1 &
pids+=($!)
slurmd -D -N localhost >"$dir/log/slurmd.out" 2>&1 &
pids+=($!)

start=$(date +%s)
state=""
for _ in $(seq 120); do
  state=$(timeout 5 sinfo -h -N -n localhost -o %T 2>/dev/null || true)
  case "$state" in idle | inval* | drain* | fail*) break ;; esac
  sleep 0.5
done
if [ "$state" != "idle" ]; then
  log "node did not become idle (waited at most 60 s (state: '${state:-no answer}'); daemon logs:"
  tail -n 30 "$dir"/log/* >&2 || true
  exit 1
fi
log "SLURM up in $(( $(date +%s) - start )) s: partition $PARTITION, $cpus CPUs, ${real_mb} MB, 1 fake GPU"

# -- 4. the command ------------------------------------------------------------------------------
# In the background so that INT/TERM reach this script's traps at once; `timeout` puts the command in
# its own process group, which cleanup kills if it is still there. HISTOFLOW_SLURM_REQUIRED makes
# tests/workflow/test_slurm.py fail rather than skip should the cluster not answer.
HISTOFLOW_SLURM_REQUIRED=1 timeout -s KILL "$TIMEOUT" "$@" &
cmd_pid=$!
set +e
wait "$cmd_pid"
rc=$?
set -e
cmd_pid=""
[ $rc -eq 137 ] && log "command killed after $TIMEOUT s (SLURM_CI_TIMEOUT)"
exit $rc

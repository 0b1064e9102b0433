#!/usr/bin/env bash
# A one-node SLURM cluster on this machine, for trying hydra/launcher=slurm and for the tests
# (tests/integration/test_slurm.py). Needs root and Debian's slurm-wlm + munge (`install` puts them in);
# everything it writes (slurm.conf, munge key and socket, spool, logs) lives in one state
# folder, never in /etc.
#
#   scripts/slurm_cluster.sh install            # apt-get install slurm-wlm munge (only when asked)
#   scripts/slurm_cluster.sh start [STATE_DIR]  # writes slurm.conf, starts munged, slurmctld, slurmd;
#                                               # waits until the node is idle; prints the export line
#   export SLURM_CONF=STATE_DIR/slurm.conf PATH=STATE_DIR/bin:$PATH
#   scripts/slurm_cluster.sh status [STATE_DIR]
#   scripts/slurm_cluster.sh stop [STATE_DIR]   # stops the three daemons (by their pid files)
#
# STATE_DIR defaults to ${TMPDIR:-/tmp}/msslab-slurm. START_TIMEOUT (s, default 60) bounds the wait.
# The cluster has no accounting database (slurmdbd needs MariaDB), so `sacct`, which submitit
# polls for job states, would fail: STATE_DIR/bin/sacct answers those polls from scontrol
# (jobs stay known for MinJobAge=600 s after they end).
set -euo pipefail

cmd=${1:-}
state=${2:-${TMPDIR:-/tmp}/msslab-slurm}
timeout_s=${START_TIMEOUT:-60}

die() { echo "error: $*" >&2; exit 1; }

pid_alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

stop() {
  local name pidfile pid
  for name in slurmd slurmctld munged; do
    pidfile=$state/$name.pid
    pid_alive "$pidfile" || continue
    pid=$(cat "$pidfile")
    kill "$pid"
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$pid" 2>/dev/null && kill -9 "$pid"
    echo "stopped $name (pid $pid)"
  done
  rm -f "$state"/*.pid
}

write_sacct_shim() {
  mkdir -p "$state/bin"
  cat >"$state/bin/sacct" <<'EOF'
#!/usr/bin/env bash
# Minimal sacct for a cluster without slurmdbd: `sacct -o JobID,State,NodeList --parsable2 -j ID ...`
# (what submitit asks), read from `scontrol show job -o`. Array tasks are reported as ID_TASK.
ids=()
while [ $# -gt 0 ]; do
  case $1 in -j|--jobs) ids+=("${2//,/ }"); shift 2;; *) shift;; esac
done
echo "JobID|State|NodeList"
scontrol show job -o 2>/dev/null | awk -v want=" ${ids[*]} " '
  { id=""; arr=""; task=""; st=""; nodes="None"
    for (i = 1; i <= NF; i++) { split($i, kv, "=")
      if (kv[1] == "JobId") id = kv[2]; else if (kv[1] == "ArrayJobId") arr = kv[2]
      else if (kv[1] == "ArrayTaskId") task = kv[2]; else if (kv[1] == "JobState") st = kv[2]
      else if (kv[1] == "NodeList" && kv[2] != "(null)") nodes = kv[2] }
    main = (arr != "") ? arr : id
    if (want != "  " && index(want, " " main " ") == 0 && index(want, " " id " ") == 0) next
    if (arr != "" && task != "") id = (task ~ /^[0-9]+$/) ? arr "_" task : arr "_[" task "]"  # pending: 7_[0-3%2]
    print id "|" st "|" nodes }'
EOF
  chmod +x "$state/bin/sacct"
}

start() {
  [ "$(id -u)" -eq 0 ] || die "the one-node cluster needs root (munged, slurmd)"
  local missing=()
  for exe in munged slurmctld slurmd sinfo scontrol; do command -v "$exe" >/dev/null || missing+=("$exe"); done
  [ ${#missing[@]} -eq 0 ] || die "not installed: ${missing[*]} (scripts/slurm_cluster.sh install, or apt-get install slurm-wlm munge)"
  if pid_alive "$state/slurmctld.pid"; then die "a cluster is running in $state already (stop it first)"; fi
  rm -rf "$state"
  mkdir -p "$state"/{munge,ctld,spool,log}
  chmod 755 "$state"
  local host cpus mem
  host=$(hostname -s)
  cpus=$(env -u OMP_NUM_THREADS -u OMP_THREAD_LIMIT nproc)  # nproc obeys OMP_NUM_THREADS otherwise
  mem=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 - 1024 ))  # MB, leave 1 GB to the system

  # munge: its own key and socket in the state folder. As the munge user when it can reach the
  # folder; else (a private temp folder, as pytest's) as root with --force, which lets munged
  # accept a socket that only root can reach: only root (the daemons and jobs here) uses it.
  dd if=/dev/urandom bs=1 count=1024 of="$state/munge/munge.key" status=none
  chmod 755 "$state/munge"; chmod 400 "$state/munge/munge.key"
  local munge_cmd=(munged --force)
  if id munge >/dev/null 2>&1 && runuser -u munge -- test -x "$state/munge"; then
    chown -R munge:munge "$state/munge"
    munge_cmd=(runuser -u munge -- munged)
  fi
  "${munge_cmd[@]}" --key-file="$state/munge/munge.key" --socket="$state/munge/munge.socket" \
    --pid-file="$state/munge/munged.pid" --log-file="$state/munge/munged.log" --seed-file="$state/munge/seed" \
    || die "munged did not start (see $state/munge/munged.log)"
  for _ in $(seq 50); do [ -S "$state/munge/munge.socket" ] && break; sleep 0.1; done
  [ -S "$state/munge/munge.socket" ] || die "munged did not start: no socket $state/munge/munge.socket"
  ln -sf "$state/munge/munged.pid" "$state/munged.pid"

  # proctrack/linuxproc and task/none: no cgroups (containers and CI machines rarely allow them).
  cat >"$state/slurm.conf" <<EOF
ClusterName=msslab
SlurmctldHost=$host
SlurmUser=root
AuthType=auth/munge
CredType=cred/munge
# cred_expire: a requeued job waits this long (s) before it may start again (default 120).
AuthInfo=socket=$state/munge/munge.socket,cred_expire=10
StateSaveLocation=$state/ctld
SlurmdSpoolDir=$state/spool
SlurmctldPidFile=$state/slurmctld.pid
SlurmdPidFile=$state/slurmd.pid
SlurmctldLogFile=$state/log/slurmctld.log
SlurmdLogFile=$state/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
ReturnToService=2
# A requeued or cancelled job gets SIGTERM, then SIGKILL this many seconds later (default 30).
KillWait=5
# Ended jobs stay known to scontrol (and the sacct stand-in) this long (s).
MinJobAge=600
NodeName=$host CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF
  write_sacct_shim
  export SLURM_CONF=$state/slurm.conf
  slurmctld -f "$SLURM_CONF" -i || die "slurmctld did not start (see $state/log/slurmctld.log)"
  slurmd -f "$SLURM_CONF" || die "slurmd did not start (see $state/log/slurmd.log)"

  local waited=0 node=""
  while [ "$waited" -lt $((timeout_s * 10)) ]; do
    node=$(sinfo -h -n "$host" -o %T 2>/dev/null || true)
    [ "$node" = idle ] && break
    sleep 0.1; waited=$((waited + 1))
  done
  if [ "$node" != idle ]; then
    local what="node $host is '${node:-unknown}'"
    pid_alive "$state/slurmctld.pid" || what="slurmctld is not running (see $state/log/slurmctld.log)"
    pid_alive "$state/slurmd.pid" || what="slurmd is not running (see $state/log/slurmd.log)"
    [ -z "$node" ] && pid_alive "$state/slurmctld.pid" && what="slurmctld does not answer sinfo"
    stop >/dev/null 2>&1 || true
    die "SLURM did not become ready within ${timeout_s} s: $what"
  fi
  echo "SLURM is up: node $host ($cpus CPUs, $mem MB), partition debug, state in $state"
  echo "export SLURM_CONF=$state/slurm.conf PATH=$state/bin:\$PATH"
}

case $cmd in
  install)
    [ "$(id -u)" -eq 0 ] || die "install needs root"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends slurm-wlm munge >/dev/null ;;
  start) start ;;
  stop) stop ;;
  status)
    if pid_alive "$state/slurmctld.pid"; then
      SLURM_CONF=$state/slurm.conf sinfo; SLURM_CONF=$state/slurm.conf squeue
    else echo "no cluster running in $state"; exit 1; fi ;;
  *) die "usage: $0 install | start [STATE_DIR] | status [STATE_DIR] | stop [STATE_DIR]" ;;
esac

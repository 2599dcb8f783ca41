#!/usr/bin/env bash
# Runs a command until it exits with a status other than 75, and exits with that status.
#
#   scripts/run_until_done.sh python train.py --config=... --workdir=...
#
# train.py exits 75 (EX_TEMPFAIL) after it has saved on a signal (SIGTERM, SIGINT, SIGHUP) or
# given up on a storage outage; rerunning the same command resumes from that checkpoint
# (docs/tpu.md, "Preemption"). Status 0 is a finished run and 1 an error that a rerun would
# only repeat, so both end the loop, as does any other status.
#
# To stop a run, signal this script (kill PID): it passes SIGTERM on to the command, which
# saves and exits 75, and the loop then ends instead of rerunning. A signal sent to the
# command alone looks like a preemption, and the loop reruns it.
set -u

if [ $# -eq 0 ]; then
  echo "usage: $0 COMMAND [ARG...]: reruns COMMAND while it exits with 75" >&2
  exit 2
fi

stopping=""
child=""
# SIGTERM whatever this script received: a background command of a non-interactive shell
# starts with SIGINT ignored.
on_signal() {
  stopping=$1
  [ -n "$child" ] && kill -TERM "$child" 2>/dev/null
}
trap 'on_signal SIGTERM' TERM
trap 'on_signal SIGINT' INT
trap 'on_signal SIGHUP' HUP

run=1
while :; do
  "$@" &
  child=$!
  [ -n "$stopping" ] && kill -TERM "$child" 2>/dev/null  # a signal just before the start
  # `wait` returns early when a trapped signal arrives: wait on until the command has exited;
  # the shell keeps its status for the last `wait`.
  while kill -0 "$child" 2>/dev/null; do
    wait "$child"
  done
  wait "$child"
  status=$?
  if [ "$status" -ne 75 ]; then
    echo "run_until_done: run $run exited with status $status; done" >&2
    exit "$status"
  fi
  if [ -n "$stopping" ]; then
    echo "run_until_done: run $run saved and exited with status 75 after $stopping; stopping, not rerunning" >&2
    exit 75
  fi
  run=$((run + 1))
  echo "run_until_done: exit status 75 (saved, to be resumed): starting run $run" >&2
done

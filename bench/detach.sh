#!/usr/bin/env bash
# Runs a bench command past the device tool's 600 s limit per call: `start` launches it in a process session of its
# own (the device keeps such a process running between calls while the machine stays warm); `wait` polls it for up
# to N seconds and packs what it has written so far, and its log, into this call's $OUT/NAME.tgz (one file: the
# device returns at most 8 files a call). The command gets its own $OUT.
#   bash bench/detach.sh start demo bash bench/gpu_demo_verl.sh sft grpo eval
#   bash bench/detach.sh wait demo 560     (one device call each, until it prints "finished")
set -uo pipefail
name=${2:?a job name}; dir=/tmp/bench-detached/$name
case "$1" in
start) shift 2; rm -rf "$dir"; mkdir -p "$dir/out"
  OUT=$dir/out setsid nohup bash -c '"${@:2}"; echo $? > "$1/rc.tmp" && mv "$1/rc.tmp" "$1/rc"' _ "$dir" "$@" \
    > "$dir/log" 2>&1 < /dev/null &
  echo $! > "$dir/pid"; echo "started $name (pid $!, log $dir/log)" ;;
wait) deadline=$((SECONDS + $3))
  while [ ! -f "$dir/rc" ] && kill -0 "$(cat "$dir/pid")" 2>/dev/null && [ $SECONDS -lt $deadline ]; do sleep 2; done
  tar -czf "${OUT:?}/$name.tgz" -C "$dir" out log; tail -c 3000 "$dir/log"
  if [ -f "$dir/rc" ]; then echo "finished $name rc=$(cat "$dir/rc")"
  elif kill -0 "$(cat "$dir/pid")" 2>/dev/null; then echo "still running $name"
  else echo "$name died without an exit status (killed?)"; fi ;;
*) echo "usage: bench/detach.sh start NAME COMMAND... | wait NAME SECONDS" >&2; exit 2 ;;
esac

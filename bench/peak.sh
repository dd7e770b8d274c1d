#!/bin/bash
# bench/peak.sh CMD...: runs CMD, samples the RSS of its process tree every 50 ms, prints wall seconds and peak total RSS (MiB)
"$@" > /dev/null 2>&1 &
pid=$!
peak=0
start=$(date +%s.%N)
while kill -0 $pid 2>/dev/null; do
  pids=$(pstree -p -T $pid 2>/dev/null | grep -o '([0-9]\+)' | tr -d '()')
  total=0
  for p in $pids; do r=$(awk '/VmRSS/{print $2}' /proc/$p/status 2>/dev/null); total=$((total + ${r:-0})); done
  [ $total -gt $peak ] && peak=$total
  sleep 0.05
done
wait $pid; code=$?
end=$(date +%s.%N)
echo "exit $code wall $(echo "$end - $start" | bc) s peak $((peak / 1024)) MiB"

#!/bin/bash
# RSS per idle connection: starts examples/idle_server, holds N*P idle connections from P
# idle_clients processes (sources spread over 127.0.0.x), prints the VmRSS delta per connection.
# Build first: cargo build --release -p gateway-core --examples. Run from the workspace root.
# usage: rss_per_conn.sh N_PER_CLIENT_PROC NPROCS [SHARDS]
N=$1; P=$2; S=${3:-1}
D=$(mktemp -d); mkfifo $D/in
target/release/examples/idle_server 127.0.0.1:0 $S < $D/in > $D/srv.log 2>&1 &
SPID=$!
exec 3>$D/in
sleep 2
ADDR=$(sed -n 's/.*addr=\([^ ]*\).*/\1/p' $D/srv.log)
B=$(awk '/VmRSS/{print $2}' /proc/$SPID/status)
echo "server pid=$SPID addr=$ADDR shards=$S rss_before_kib=$B"
CL=()
for i in $(seq 0 $((P-1))); do
  mkfifo $D/cin$i
  target/release/examples/idle_clients $ADDR $N $((2 + i*2)) < $D/cin$i > $D/cli$i.log 2>&1 &
  CL+=($!)
  eval "exec $((4+i))>$D/cin$i"
done
for i in $(seq 0 $((P-1))); do
  for t in $(seq 1 900); do grep -q "held=" $D/cli$i.log && break; kill -0 ${CL[$i]} 2>/dev/null || { cat $D/cli$i.log; break; }; sleep 0.2; done
done
sleep 3
A=$(awk '/VmRSS/{print $2}' /proc/$SPID/status)
echo "after: rss_kib=$A  ($(tail -1 $D/srv.log))  server_fds=$(ls /proc/$SPID/fd | wc -l)"
echo "bytes/conn = $(( (A-B)*1024 / (N*P) ))"
exec 3>&-
for i in $(seq 0 $((P-1))); do eval "exec $((4+i))>&-"; done
wait
rm -rf $D

#!/bin/bash
# Three rounds of NATS, fovea with idle spinning (default) and fovea with FOVEA_IDLE_SPIN=0, for
# RPC with 1 and 64 callers and pub/sub; run from the repo root after `cargo build --release -p fovea`.
# BENCHMARKS.md, "Idle spinning".
F=${FOVEA:-./target/release/fovea}
N=${NATS_SH:?set NATS_SH to the bench/nats.sh script of the benchmark harness}
for r in 1 2 3; do
  $N reqrep 20000 64 1 2>/dev/null | tail -1
  $F bench rpc --callers 1 --calls 20000 2>/dev/null | tail -1 | sed 's/^/spin=100us /'
  FOVEA_IDLE_SPIN=0 $F bench rpc --callers 1 --calls 20000 2>/dev/null | tail -1 | sed 's/^/spin=0 /'
  $N reqrep 300000 64 64 2>/dev/null | tail -1
  $F bench rpc --callers 64 --calls 300000 2>/dev/null | tail -1 | sed 's/^/spin=100us /'
  FOVEA_IDLE_SPIN=0 $F bench rpc --callers 64 --calls 300000 2>/dev/null | tail -1 | sed 's/^/spin=0 /'
  $N pubsub 2000000 64 2>/dev/null | tail -1
  $F bench pubsub --msgs 2000000 2>/dev/null | tail -1 | sed 's/^/spin=100us /'
  FOVEA_IDLE_SPIN=0 $F bench pubsub --msgs 2000000 2>/dev/null | tail -1 | sed 's/^/spin=0 /'
done

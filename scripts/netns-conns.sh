#!/usr/bin/env bash
# Idle connections over a network path: runs `fovea bench conns` in a network namespace
# of its own, where the node listens on a non-loopback address (10.77.0.1, added to the
# namespace's loopback device: no kernel module needed). The node then gives the benchmark's clients its network-path settings (MTU
# discovery up to 1 452 bytes), as it would clients on other hosts; on 127.0.0.1 they get
# loopback's (6 500-byte datagrams from the start, no MTU discovery).
# The packets still go through the namespace's loopback device: nothing leaves the host.
#
# Usage: sudo scripts/netns-conns.sh [bench conns flags, e.g. --conns 20000]
# Needs root (ip netns) and iproute2. F=path/to/fovea (default ./target/release/fovea).
set -euo pipefail
F=$(realpath "${F:-./target/release/fovea}")
NS=fovea-conns-$$
ip netns add "$NS"
trap 'ip netns del "$NS"' EXIT
ip -n "$NS" link set lo up
ip -n "$NS" addr add 10.77.0.1/32 dev lo
ip netns exec "$NS" "$F" bench conns --node-listen 10.77.0.1:0 "$@"

"""An emulated cluster on one machine: hosts in network namespaces joined by rate-limited links.

    sudo parsgd launch --workers 2 --link 100mbit --dataset synthetic --num-samples 4096 --epochs 1

`rates.py` parses link rates (`100mbit`) and delays; `netns.py` runs every `ip` / `tc` / `sysctl`
call inside a named namespace (never in the machine's own), holds the per-run lock and sweeps the
namespaces of launchers that are gone; `emulated.py` builds the star network (a bridge in its own
namespace, one veth pair per host shaped in both directions) and starts processes in a host;
`probe.py` measures it (ping-pong at several message sizes, streaming capacity) over ZeroMQ with
CURVE, as parsgd's own sockets are set up.
"""

"""Real hosts: `parsgd node` (a process of a run under srun, mpirun, torchrun or `launch --hostfile`) and the
options `launch` takes to start one on every host of a hostfile (`--hostfile`, `-H`, `--rsh`, `--dry-run`)."""
from __future__ import annotations

import os
import sys

import click
from click.core import ParameterSource

from parsgd.cli.options import (Option, _apply, build_config, build_server_options, compress_options,
                                consistency_options, force_option,
                                ranges_options, server_options, training_options)

HOST_OPTIONS = ("hostfile", "hosts", "rsh", "remote_python", "remote_env", "port", "dry_run")


def hosts_options(f):
    """`launch --hostfile FILE | -H LIST [--rsh T] [--remote-python P] [-x NAME[=V]] [--port N] [--dry-run]`."""
    from parsgd.jobs.remote import DEFAULT_RSH
    return _apply(f, [
        click.option("--hostfile", type=click.Path(dir_okay=False),
                     help="Run on these hosts: lines of `HOST [slots=N]` (# comments; localhost: this machine). "
                          "Servers take the first slots, then workers in file order."),
        click.option("-H", "--hosts", "hosts", help="The hosts on one line: host1:2,host2:2 (HOST[:SLOTS])."),
        click.option("--rsh", default=DEFAULT_RSH, show_default=True,
                     help="With --hostfile / -H: how to run a command on {host} (e.g. 'ip netns exec {host}')."),
        click.option("--remote-python", "--remote_python", "remote_python", default=sys.executable, cls=Option,
                     show_default="this launcher's interpreter", help="With --hostfile / -H: the python on the hosts."),
        click.option("-x", "--env", "remote_env", multiple=True,
                     help="With --hostfile / -H: set NAME=VALUE on every host, or pass this NAME's value "
                          "(repeatable)."),
        click.option("--port", type=int, default=5555, show_default=True,
                     help="With --hostfile / -H: server 0's port on its host."),
        click.option("--dry-run", "--dry_run", "dry_run", is_flag=True,
                     help="With --hostfile / -H: print every command, its environment and its stdin; start nothing."),
    ])


def launch_on_hosts(ctx: click.Context, workers: int, sopts, force: bool, out, opts: dict) -> int:
    """The `launch` command with --hostfile or -H. Raises UsageError for options that only work on one machine."""
    from parsgd.cluster.hostfile import parse_hostfile, parse_hosts, place
    from parsgd.jobs.remote import HostsOptions, forwarded_env, launch_hosts
    from parsgd.training.rundir import default_out

    if opts["hostfile"] and opts["hosts"]:
        raise click.UsageError("give --hostfile or -H, not both")
    local_only = [name for name in ("transport", "link", "resume", "faults", "restart_workers", "colocate",
                                    "link_delay", "server_link") if ctx.get_parameter_source(name) ==
                  ParameterSource.COMMANDLINE]
    if local_only:
        flags = ", ".join("--" + n.replace("_", "-") for n in local_only)
        raise click.UsageError(f"{flags} cannot be used with --hostfile / -H (one machine only); leave it out")
    hosts = parse_hostfile(opts["hostfile"]) if opts["hostfile"] else parse_hosts(opts["hosts"])
    given_workers = ctx.get_parameter_source("workers") == ParameterSource.COMMANDLINE
    n = len(place(hosts, opts.get("servers", 1), workers if given_workers else None)) - opts.get("servers", 1)
    cfg = build_config(n, **opts)
    if not (1 <= opts["port"] <= 65535):
        raise click.BadParameter(f"{opts['port']} is not a port 1..65535", param_hint="--port")
    hopts = HostsOptions(tuple(hosts), opts["rsh"], opts["remote_python"], forwarded_env(opts["remote_env"]),
                         opts["port"], ctx.params.get("keys_dir"), opts["dry_run"])
    return launch_hosts(cfg, sopts, hopts, str(out or default_out("ps", n)), click.echo, force)


@click.command()
@click.option("--stdin", "use_stdin", is_flag=True,
              help="Print the version line, read the keys (and server 0's run spec) from stdin, exit when stdin "
                   "closes: what `launch --hostfile` starts.")
@click.option("--port", type=int, cls=Option, show_default="5555",
              help="Server 0's port; beats MASTER_PORT (not PARSGD_SERVER's port).")
@click.option("--server-addr", "--server_addr", "server_addr",
              help="Server 0's HOST[:PORT], before anything the environment says (e.g. for mpirun).")
@click.option("--keys", "keys_dir", type=click.Path(),
              help="CURVE key folder from `parsgd keygen`, the same on every host (needed unless server 0's host "
                   "is loopback).")
@server_options
@ranges_options
@compress_options
@consistency_options
@force_option
@training_options
@click.pass_context
def node(ctx, use_stdin, port, server_addr, keys_dir, wait_timeout, heartbeat, liveness, step_timeout,
         checkpoint_every, colocate, force, out, **opts):
    """One process of a run under srun, mpirun or torchrun: rank 0 is server 0, ranks below --servers range servers,
    the rest workers."""
    from parsgd.cluster.contract import resolve
    from parsgd.jobs.node import hello, run_node
    from parsgd.jobs.serve import ServerSpec

    if use_stdin:
        click.echo(hello())  # first, so the launcher compares versions before anything else can fail
        sys.stdout.flush()
    if colocate:
        raise click.UsageError("--colocate cannot be used with parsgd node: every rank is a process of its own")
    if port is not None and not 1 <= port <= 65535:
        raise click.BadParameter(f"{port} is not a port 1..65535", param_hint="--port")
    role = resolve(os.environ, opts.get("servers", 1), port, server_addr)
    if not use_stdin and not keys_dir:  # every rank, before it loads anything: what server 0 would refuse
        from parsgd.jobs.node import server_bind
        from parsgd.ps.sockets import BindError, is_loopback
        address = server_bind(role)
        if not is_loopback(address):
            raise BindError(f"server 0 at {address} is not a loopback address: the run needs CURVE keys "
                            "(`parsgd keygen DIR` once, on a shared folder or copied to every host, then --keys DIR "
                            "on every rank)")
    spec = None
    if role.role == "server" and role.index == 0 and not use_stdin:
        from parsgd.training.rundir import default_out
        cfg = build_config(role.workers, **opts)
        sopts = build_server_options(wait_timeout, heartbeat, liveness, step_timeout, checkpoint_every, False)
        spec = ServerSpec(config=cfg, server=sopts, out=str(out or default_out("ps", role.workers)), force=force)
    return run_node(role, spec, keys_dir, use_stdin)


COMMANDS = (node,)

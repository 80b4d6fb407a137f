"""Training commands: train, server, worker, launch, keygen. Each parses, builds the configs, calls the jobs layer."""
from __future__ import annotations

import click
from click.core import ParameterSource

from parsgd.cli.hosts import hosts_options
from parsgd.cli.options import (Option, compress_options, consistency_options, build_config, build_server_options,
                                check_range,
                                force_option, given_options, list_spec, ranges_options, run_dir_value,
                                server_options, training_options)


@click.command()
@click.option("--workers", type=int, default=1, show_default=True,
              help="1: sequential; P > 1: the multiprocessing.Pool data-parallel baseline.")
@click.option("--blas-threads", "--blas_threads", "blas_threads", type=int, cls=Option,
              show_default="the library's own choice",
              help="Limit BLAS threads in this process.")
@force_option
@training_options
def train(workers, blas_threads, force, out, **opts):
    """Train on one machine: sequentially, or with the Pool baseline (--workers P)."""
    from parsgd.jobs.train import run_training

    if blas_threads is not None:
        check_range("--blas-threads", blas_threads, blas_threads >= 1, "a whole number >= 1 (omit it for the default)")
    run_training(build_config(workers, **opts), out, blas_threads, force=force)


def _spec_alone(ctx: click.Context) -> None:
    """`server --spec FILE` takes every setting from FILE: refuse other options given with it."""
    given = [p.opts[0] for p in ctx.command.params
             if p.name != "spec" and ctx.get_parameter_source(p.name) == ParameterSource.COMMANDLINE]
    if given:
        raise click.UsageError(f"--spec takes every setting from its file: drop {', '.join(given)}")


@click.command()
@click.option("--bind", default="tcp://127.0.0.1:5555", show_default=True,
              help="Address to listen on: tcp://HOST:PORT (port * picks a free one) or ipc://PATH. "
                   "A non-loopback address needs --keys.")
@click.option("--workers", type=int, default=1, show_default=True,
              help="Workers to wait for; also the number of shards of every batch.")
@server_options
@click.option("--shm/--no-shm", default=True, show_default=True,
              help="Move parameters and gradients of same-host workers through shared memory.")
@click.option("--keys", "keys_dir", type=click.Path(), help="CURVE key folder from `parsgd keygen`.")
@click.option("--register-timeout", "--register_timeout", "register_timeout", type=float, default=60.0,
              show_default=True,
              help="Seconds a welcomed worker has to load its data and send READY before it is forgotten.")
@click.option("--resume", type=click.Path(), callback=run_dir_value, help="Continue the run in this run directory from its checkpoint.")
@click.option("--spec", type=click.Path(dir_okay=False), hidden=True,
              help="A ServerSpec JSON file (config, server options, run directory) from launch; nothing else.")
@click.option("--rank", type=int, default=0, show_default=True,
              help="With --servers S: which server this is; 0 coordinates (and takes the training options), "
                   "1..S-1 hold a key range and take everything from server 0 (--connect).")
@click.option("--connect", help="--rank 1..S-1: the address of server 0 (its --bind).")
@click.option("--connect-timeout", "--connect_timeout", "connect_timeout", type=float, default=60.0,
              show_default=True, help="--rank 1..S-1: seconds to keep trying to reach server 0 before giving up.")
@ranges_options
@compress_options
@consistency_options
@force_option
@training_options
@click.pass_context
def server(ctx, bind, workers, wait_timeout, heartbeat, liveness, step_timeout, checkpoint_every, colocate, shm,
           keys_dir, register_timeout, resume, spec, rank, connect, connect_timeout, force, out, **opts):
    """Run a parameter server: hold the weights (or, with --servers S, a key range of them), wait for workers, train."""
    from parsgd.jobs.serve import ServerSpec, run_server
    from parsgd.ps.address import parse_endpoint
    from parsgd.ps.sockets import refuse_open_bind

    if rank or connect:  # a range server: everything but where to listen comes from server 0
        from parsgd.jobs.serve import run_range_server
        return run_range_server(ctx, rank, connect, bind, keys_dir, connect_timeout, shm)
    if spec:
        _spec_alone(ctx)
        s = ServerSpec.read(spec)
        run_server(s.config, s.server, s.out, s.resume, given=s.given, say_replaced=False,  # launch said it
                   force=s.force)
        return
    endpoint = parse_endpoint(bind, "bind")  # before anything is loaded: a bad address is exit 2 at once
    sopts = build_server_options(wait_timeout, heartbeat, liveness, step_timeout, checkpoint_every, colocate, bind=bind,
                                 shm=shm, keys_dir=keys_dir, register_timeout_s=register_timeout,
                                 transport="shm" if shm else endpoint.scheme)
    cfg = None if resume else build_config(workers, **opts)
    refuse_open_bind(bind, keys_dir)  # exit 1, also before loading
    run_server(cfg, sopts, out, resume, given=given_options(ctx) if resume else None, force=force)


@click.command()
@click.option("--connect", default="tcp://127.0.0.1:5555", show_default=True, help="The server's address.")
@click.option("--connect-timeout", "--connect_timeout", "connect_timeout", type=float, default=60.0,
              show_default=True, help="Seconds to keep trying to reach a server before giving up.")
@click.option("--data-dir", "--data_dir", "data_dir",
              help="Where this worker finds the dataset files, if not where the server's config says.")
@click.option("--keys", "keys_dir", type=click.Path(), help="CURVE key folder from `parsgd keygen`.")
@click.option("--faults", default="", envvar="PARSGD_FAULTS", show_envvar=True,
              help="Fault injection for tests and demos, e.g. kill@40 or drop=0.1,seed=7.")
@click.option("--name", default="", help="A label for this worker in the server's log.")
def worker(connect, connect_timeout, data_dir, keys_dir, faults, name):
    """Run a worker: take the config from the server, compute gradients until it says stop."""
    from parsgd.ps.address import parse_endpoint
    from parsgd.ps.worker import Worker, WorkerOptions

    parse_endpoint(connect, "connect")
    list_spec(faults, "--faults", "kill@40,drop=0.1")
    check_range("--connect-timeout", connect_timeout, connect_timeout > 0, "a finite number > 0 seconds")
    w = Worker(WorkerOptions(connect=connect, connect_timeout_s=connect_timeout, data_dir=data_dir,
                             keys_dir=keys_dir, faults=faults, name=name))
    return w.run()


@click.command()
@click.option("--workers", type=int, default=2, show_default=True, help="Worker processes to start.")
@click.option("--transport", type=click.Choice(("shm", "tcp", "ipc")), default="shm", show_default=True,
              help="shm: messages over loopback TCP, parameters and gradients in shared memory; "
                   "tcp / ipc: everything through the socket.")
@server_options
@click.option("--restart-workers", "--restart_workers", "restart_workers", type=int, default=0, show_default=True,
              help="Restart a crashed worker, up to this many times in all.")
@click.option("--faults", default="",
              help="Fault schedule, e.g. kill=worker1@step40,stop=worker2@step60:5s,drop=0.05,seed=3.")
@click.option("--resume", type=click.Path(), callback=run_dir_value, help="Continue the run in this run directory from its checkpoint.")
@click.option("--link", help="Emulated hosts: the server and each worker in a network namespace of its own, joined "
                             "by links of this rate each way, e.g. 100mbit, 1gbit (root only; transport tcp, CURVE).")
@click.option("--server-link", "--server_link", "server_link", cls=Option, show_default="--link",
              help="With --link and --servers: the rate of every server's link, e.g. 1gbit.")
@click.option("--link-delay", "--link_delay", "link_delay",
              help="With --link: one-way latency between emulated hosts, e.g. 5ms (netem, or a delay relay per host).")
@click.option("--keys", "keys_dir", type=click.Path(),
              help="With --link: the CURVE key folder (`parsgd keygen`); default: keys made for the run.")
@ranges_options
@compress_options
@consistency_options
@force_option
@hosts_options
@training_options
@click.pass_context
def launch(ctx, workers, transport, wait_timeout, heartbeat, liveness, step_timeout, checkpoint_every, colocate,
           restart_workers, faults, resume, link, server_link, link_delay, keys_dir, force, out, **opts):
    """Start a parameter server and N workers on this machine (or on --hostfile's hosts); stop them all on exit."""
    if opts["hostfile"] or opts["hosts"]:
        from parsgd.cli.hosts import launch_on_hosts
        return launch_on_hosts(ctx, workers, build_server_options(wait_timeout, heartbeat, liveness, step_timeout,
                                                                  checkpoint_every, colocate), force, out, opts)
    from parsgd.jobs.launch import LaunchError, launch as run_launch
    from parsgd.data.load import check_num_samples
    from parsgd.jobs.launch import check_ipc_room
    from parsgd.ps.faults import parse_launch_faults
    from parsgd.training.divergence import EXIT_DIVERGED, RunDiverged

    server_errors = []  # the server's own `error: ...` line, repeated as this command's error

    def echo(line: str) -> None:
        click.echo(line)
        if line.startswith("[server] error: "):
            server_errors.append(line.removeprefix("[server] error: "))

    from parsgd.jobs.emulate import link_options
    list_spec(faults, "--faults", "kill=worker1@step40,drop=0.05")
    if colocate and opts.get("servers", 1) > 1:
        raise click.UsageError("--colocate cannot be used with --servers above 1: the colocated worker shares "
                               "server 0's process, which is not all of the model; leave out one of them")
    if colocate and link:
        raise click.UsageError("--colocate cannot be used with --link: emulated hosts keep the server and every "
                               "worker apart (and use CURVE keys); leave out one of them")
    link = link_options(link, link_delay, keys_dir, transport, faults, server_link)  # root, netem or nft: before anything starts
    sopts = build_server_options(wait_timeout, heartbeat, liveness, step_timeout, checkpoint_every, colocate,
                                 faults=faults)
    check_range("--restart-workers", restart_workers, restart_workers >= 0, "a whole number >= 0 (restarts in all)")
    cfg = None if resume else build_config(workers, **opts)  # resuming: the checkpoint's, checked by the job
    if transport == "ipc":
        check_ipc_room()  # TMPDIR short enough for the socket path launch makes there
    if not resume:
        check_num_samples(cfg.dataset, cfg.data_dir, cfg.num_samples)  # the server child would refuse it
    per_worker = parse_launch_faults(faults, workers, colocated=colocate)
    status = run_launch(cfg, sopts, transport, out, resume=resume, worker_faults=per_worker,
                        restart_workers=restart_workers, echo=echo, given=given_options(ctx) if resume else None,
                        link=link, force=force)
    if status == 1 and server_errors:
        raise LaunchError(server_errors[-1])
    if status == EXIT_DIVERGED and server_errors:  # trained to the end, every file written: say why, exit 3
        raise RunDiverged(server_errors[-1])
    return status


@click.command()
@click.argument("directory", type=click.Path())
@click.option("--force", is_flag=True,
              help="Replace keys already in DIRECTORY (workers set up with the old ones are then locked out).")
def keygen(directory, force):
    """Write CURVE keypairs for a server and a worker into DIRECTORY (and allow that worker)."""
    from parsgd.ps.sockets import existing_keys, keygen as make_keys

    old = existing_keys(directory) if force else []
    for path in make_keys(directory, force=force):
        click.echo(str(path))
    if old:
        click.echo(f"replaced the earlier keys in {directory}: {', '.join(old)}; give workers set up with them "
                   "the new worker.key_secret and server.key")


COMMANDS = (train, server, worker, launch, keygen)

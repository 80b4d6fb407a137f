"""`parsgd replay RUN_DIR`: recompute a parameter-server run from updates.jsonl and compare."""
from __future__ import annotations

import click

from parsgd.cli.options import run_dir_value


@click.command(short_help="Recompute a parameter-server run from updates.jsonl; exit 0 only if identical.")
@click.argument("run_dir", type=click.Path(), callback=run_dir_value)
def replay(run_dir):
    """Recompute RUN_DIR in one process from its updates.jsonl (each gradient on the parameter
    version it was computed on) and compare with its model.npz: exit 0 only if they are identical,
    1 if they differ."""
    from parsgd.jobs.replay import replay as run_replay

    diff = run_replay(run_dir, echo=click.echo)
    if diff != 0.0:
        click.echo(f"error: the replay differs from {run_dir}/model.npz by up to {diff:g}", err=True)
        return 1
    return 0


COMMANDS = (replay,)

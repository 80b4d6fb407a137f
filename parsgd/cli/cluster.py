"""Emulated-cluster commands: `parsgd estimate` (the alpha-beta cost model of an emulated run)."""
from __future__ import annotations

import json

import click

from parsgd.cli.options import Option, list_items, no_repeats, parse_int_list, run_dir_value
from parsgd.cli.reports import LINK_LIST

DELAY_LIST = "one-way delays separated by commas or spaces, e.g. --link-delay 0,5ms"


@click.command()
@click.argument("run_dir", type=click.Path(), callback=run_dir_value)
@click.option("--workers", multiple=True, default=("2,4,8,16,64",), show_default=True,
              help="Worker counts to predict: 2,4 or '2 4' or a repeated flag.")
@click.option("--link", "links", multiple=True,
              help="Link rates to predict, e.g. 1gbit,10gbit [default: the run's own link].")
@click.option("--servers", multiple=True, cls=Option, show_default="the run's own",
              help="Parameter server counts S to predict, e.g. 1,2,4.")
@click.option("--server-link", "--server_link", "server_link", cls=Option, show_default="each --link",
              help="The servers' link rate, e.g. 1gbit.")
@click.option("--link-delay", "--link_delay", "link_delays", multiple=True, cls=Option, show_default="the run's own",
              help="One-way link delays to predict, e.g. 0,5ms (per-message alpha: the unshaped one plus the delay).")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per prediction, one per line.")
@click.option("--overlap", is_flag=True,
              help="Predict the step with --overlap none, layer and buckets, and advise one (any BSP "
                   "parameter-server run; the pipeline model of analysis/overlapmodel.py).")
@click.option("--alpha", type=float, cls=Option, show_default="half the link check's round trip, else 0",
              help="--overlap: one-way latency of every message, in seconds.")
def estimate(run_dir, workers, links, servers, server_link, link_delays, as_json, overlap, alpha):
    """Predict step time, epoch time, speedup and communication share for other worker counts and links."""
    if overlap:
        return _estimate_overlap(run_dir, workers, links, alpha, as_json)
    from parsgd.analysis.costmodel import estimate as run_estimate, format_estimate
    from parsgd.cluster.rates import parse_delay, parse_rates
    from parsgd.config import ConfigError

    counts = no_repeats(parse_int_list(workers, "--workers"), "--workers")
    if not counts or min(counts) < 1:
        raise ConfigError(f"--workers {','.join(map(str, counts))}: give worker counts >= 1, e.g. --workers 2,4")
    server_counts = no_repeats(parse_int_list(servers, "--servers"), "--servers")
    if server_counts and min(server_counts) < 1:
        raise ConfigError(f"--servers {','.join(map(str, server_counts))}: give server counts >= 1, e.g. --servers 1,2,4")
    if server_link:
        parse_rates([server_link], "--server-link")
    rates = parse_rates(list_items(links, "--link", LINK_LIST), "--link") or None
    delays = [parse_delay(d) for d in list_items(link_delays, "--link-delay", DELAY_LIST)] or None
    model, predictions = run_estimate(run_dir, counts, rates, server_counts or None, server_link, delays)
    if as_json:
        for p in predictions:
            click.echo(json.dumps(p))
    else:
        click.echo(format_estimate(model, predictions))


def _estimate_overlap(run_dir, workers, links, alpha, as_json):
    from parsgd.analysis.overlapmodel import estimate_overlap, format_overlap
    from parsgd.cli.options import check_range
    from parsgd.cluster.rates import parse_rates

    check_range("--alpha", alpha, alpha is None or 0 <= alpha < 60, "a finite number of seconds from 0 to 60")
    given = click.get_current_context().get_parameter_source("workers").name == "COMMANDLINE"
    counts = no_repeats(parse_int_list(workers, "--workers"), "--workers") if given else None
    rates = list_items(links, "--link", LINK_LIST)
    parse_rates(rates, "--link")
    est = estimate_overlap(run_dir, counts, rates or None, alpha)
    click.echo(json.dumps(est) if as_json else format_overlap(est))


COMMANDS = (estimate,)

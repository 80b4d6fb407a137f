"""Reports: experiment (runs every mode, then the report and plots), plot (runs or an experiment folder), trace."""
from __future__ import annotations

import click

from parsgd.config import DATASETS

from parsgd.cli.options import (Option, build_config, check_range, error_feedback_option, force_option, list_items,
                                list_spec, no_repeats,
                                parse_int_list, parse_str_list, run_dir_value, training_options)

LINK_LIST = "link rates separated by commas or spaces, e.g. --link 100mbit,1gbit"  # how to write a --link list


@click.command()
@click.option("--workers", multiple=True, default=("2,4",), show_default=True,
              help="Worker counts P to compare, each run with the Pool baseline and the parameter server: "
                   "2,4 or '2 4' or a repeated flag.")
@click.option("--modes", multiple=True, default=("sequential,pool,ps",), show_default=True,
              help="Which of sequential, pool, ps to run (sequential is the speedup baseline).")
@click.option("--transport", "transports", multiple=True, default=("shm,tcp",), show_default=True,
              help="Parameter-server transports to run for each P: shm, tcp, ipc (see `parsgd launch --help`).")
@click.option("--consistency", "consistencies", multiple=True, default=("bsp",), show_default=True,
              help="Consistency models to run every parameter-server configuration under: bsp, ssp, async "
                   "(see `parsgd launch --help`), e.g. bsp,async.")
@click.option("--compress", "compresses", multiple=True, default=("none",), show_default=True,
              help="Gradient codecs to run every parameter-server configuration with (see `parsgd launch --help`), "
                   "e.g. none,fp16,topk:0.01.")
@error_feedback_option
@click.option("--staleness", type=int, default=0, show_default=True,
              help="ssp: how many clocks a worker may run ahead of the slowest live one (launch --staleness).")
@click.option("--faults", default="",
              help="Fault schedule of every parameter-server configuration, as `parsgd launch --faults`, e.g. "
                   "slow=worker1:3 (a straggler: where the consistency models differ).")
@click.option("--overlap", "overlaps", multiple=True, default=("none",), show_default=True,
              help="Overlap modes to run every bsp parameter-server configuration with: none, layer, bucket "
                   "(see `parsgd launch --help`), e.g. none,layer,bucket.")
@click.option("--bucket-bytes", "--bucket_bytes", "bucket_bytes", type=int, default=65536, show_default=True,
              help="--overlap bucket: bytes of a bucket (launch --bucket-bytes).")
@click.option("--link-delay", "--link_delay", "link_delay",
              help="With --link: every link's one-way latency, e.g. 5ms (see `parsgd launch --link-delay`).")
@click.option("--link", "links", multiple=True,
              help="Run every parameter-server configuration on emulated hosts over links of each of these rates, "
                   "e.g. 100mbit,1gbit (root only; see `parsgd launch --link`).")
@click.option("--repeat", type=int, default=1, show_default=True,
              help="Run every configuration this many times (rounds of all of them); the table and speedup.png "
                   "show the median and the min-max.")
@click.option("--quiet", "-q", is_flag=True, help="No per-epoch lines: one progress line per configuration.")
@click.option("--verbose", "-v", is_flag=True, help="Show every line of the server and worker processes.")
@force_option
@training_options
def experiment(workers, modes, transports, consistencies, compresses, staleness, faults, overlaps, bucket_bytes,
               link_delay, links, repeat, quiet, verbose, force, out, **opts):
    """Compare sequential, Pool and parameter-server training with one seed: table, report, plots."""
    from parsgd.jobs.experiment import MODES, run_experiment
    from parsgd.jobs.launch import TRANSPORTS, check_ipc_room
    from parsgd.jobs.train import load_data

    check_range("--repeat", repeat, 1 <= repeat <= 1000, "a whole number from 1 to 1000")
    from parsgd.cluster.rates import parse_rates
    from parsgd.jobs.emulate import link_options
    links = parse_rates(list_items(links, "--link", LINK_LIST))
    list_spec(faults, "--faults", "slow=worker1:3,seed=7")
    if links or link_delay is not None:  # root with CAP_NET_ADMIN, netem or nft, before anything starts
        link_options(links[0] if links else None, link_delay, None, "tcp", faults)

    modes = no_repeats(parse_str_list(modes, MODES, "--modes"), "--modes")
    transports = no_repeats(parse_str_list(transports, TRANSPORTS, "--transport"), "--transport")
    from parsgd.config import CONSISTENCY
    consistencies = no_repeats(parse_str_list(consistencies, CONSISTENCY, "--consistency"), "--consistency")
    check_range("--staleness", staleness, staleness >= 0 and (staleness == 0 or "ssp" in consistencies),
                "a whole number >= 0, for --consistency ssp only")
    from parsgd.config import OVERLAP
    overlaps = no_repeats(parse_str_list(overlaps, OVERLAP, "--overlap"), "--overlap")
    cfg = build_config(1, bucket_bytes=bucket_bytes, **opts)
    compresses = no_repeats(tuple(list_items(compresses, "--compress", "codecs separated by commas, e.g. "
                                             "--compress none,topk:0.01")), "--compress")
    for z in compresses:
        cfg.replace(compress=z)  # a bad codec: exit 2 before anything runs
    if "none" not in overlaps and "none" not in compresses:
        raise click.UsageError(f"--overlap {','.join(overlaps)} with --compress {','.join(compresses)}: not supported "
                               "together (an overlap mode runs with --compress none only); add none to one list")
    workers_list = no_repeats(parse_int_list(workers, "--workers"), "--workers")
    for p in workers_list:
        if not 1 <= p <= cfg.batch_size:
            raise click.BadParameter(f"{p} is out of range: each P must be between 1 and --batch-size "
                                     f"({cfg.batch_size})", param_hint="--workers")
    if "ps" in modes and faults:
        from parsgd.ps.faults import parse_launch_faults
        for p in workers_list:
            parse_launch_faults(faults, p)  # a bad schedule, or a worker index >= P: exit 2 before anything runs
    if "ps" in modes and "ipc" in transports:
        check_ipc_room()
    cfg, data = load_data(cfg, quiet)
    run_experiment(cfg, workers_list, modes, transports, out or "results", quiet=quiet, verbose=verbose, data=data,
                   repeat=repeat, links=links, consistencies=consistencies, staleness=staleness,
                   faults=faults, force=force, overlaps=overlaps, compresses=compresses, link_delay=link_delay)


for _param in experiment.params:
    if _param.name == "out":
        _param.help = "Folder for the run directories, experiment_report.txt and the plots."
        _param.show_default = "results"
    if _param.name == "force":
        _param.help = ("Replace files in --out with a run's or the experiment's output names that parsgd did not "
                       "write (no parsgd config.json beside them, not in experiment.json's files); without it they "
                       "are refused.")


@click.command()
@click.argument("run_dirs", nargs=-1, required=True, type=click.Path(), metavar="RUN_DIR... | EXPERIMENT_DIR")
@click.option("-o", "--out", type=click.Path(), cls=Option,
              show_default="the run directory (or experiment folder) for one, else the current folder",
              help="Folder for the PNGs.")
def plot(run_dirs, out):
    """Plot runs: loss, accuracy, epoch time (every run a series); PS runs add timeline and overhead.

    One experiment folder (`parsgd experiment --out DIR`) instead: the plots the experiment drew, from
    its runs."""
    from parsgd.analysis.plots import plot_runs

    for path in plot_runs(run_dirs, out, echo=lambda line: click.echo(f"note: {line}", err=True)):
        click.echo(str(path))


@click.command()
@click.argument("run_dir", type=click.Path(), callback=run_dir_value)
@click.option("-o", "--out", type=click.Path(), cls=Option, show_default="RUN_DIR/trace.json",
              help="Trace file to write.")
def trace(run_dir, out):
    """Write a parameter-server run's comm.jsonl as a Chrome trace (open it in ui.perfetto.dev)."""
    from pathlib import Path

    from parsgd.analysis.trace import write_trace

    out = Path(out) if out else Path(run_dir) / "trace.json"
    n = write_trace(run_dir, out)
    click.echo(f"wrote {n} spans to {out}: open it in https://ui.perfetto.dev or chrome://tracing")


@click.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path(), metavar="RUN_DIR... | EXPERIMENT_DIR")
@click.option("--html", "html_file", type=click.Path(dir_okay=False), cls=Option,
              show_default="the comparison table on stdout",
              help="Write ONE self-contained HTML file (plots, zoomable timeline, tables, every run's config; "
                   "no network request) and print its path.")
def report(paths, html_file):
    """Report runs or an experiment folder: the comparison table, or with --html FILE one HTML page of everything."""
    if html_file:
        from parsgd.analysis.html_report import write_html

        click.echo(str(write_html(paths, html_file)))
        return
    from parsgd.analysis.html_report import load_targets
    from parsgd.analysis.report import comparison_rows, format_table

    runs, baseline, _ = load_targets(paths)
    click.echo(format_table(comparison_rows(runs, baseline)))


@click.command(name="eval")
@click.argument("target", type=click.Path(), metavar="RUN_DIR_OR_MODEL")
@click.option("--dataset", type=click.Choice(DATASETS), cls=Option, show_default="the run's own (a bare model: auto)",
              help="Score the model on this dataset's test split.")
@click.option("--data-dir", "--data_dir", "data_dir", cls=Option, envvar="PARSGD_DATA_DIR", show_envvar=True,
              show_default="the run's own, else $XDG_CACHE_HOME/parsgd",
              help="Folder with mnist/ and fashion-mnist/ IDX files.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as one JSON object.")
def eval_command(target, dataset, data_dir, as_json):
    """Score a saved model (a run directory or its model.npz): test loss, accuracy, confusion matrix."""
    from parsgd.analysis.evaluate import evaluate_model, format_evaluation
    from parsgd.files import json_text

    result = evaluate_model(target, dataset, data_dir)
    click.echo(json_text(result) if as_json else format_evaluation(result))


COMMANDS = (experiment, plot, trace, report, eval_command)

"""The ``epnas`` command: ``search`` (the embedded default), ``status``, ``validate``, ``export``,
``report``, and from other packages ``train`` (``child_trainer``) and ``controller``.

Exit codes (``epnas.errors``): 0 done, 2 invalid input (every problem listed on stderr), 1
anything else.  The commands defined here raise ``epnas.errors.EpnasError`` and never exit
themselves: ``EpnasGroup.invoke`` is the one place that prints an error's lines and exits with
its code, without a traceback.  Any other exception is a bug and keeps its traceback.

``train`` and ``controller`` are click commands of ``child_trainer`` and ``controller``, found
through entry points (``EpnasGroup``, ``epnas.commands``) since ``epnas`` never imports those
packages; they report their own errors and exit with their own codes (``epnas-trainer: …``,
``epnas controller: …``), the same as ``python -m child_trainer`` and ``python -m controller``.
"""

from __future__ import annotations

import importlib.metadata
import json
import pathlib
import shlex
import shutil
from typing import Any, NoReturn

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from epnas.checkpoint import SUMMARY, pin_search, read_history, read_state_json
from epnas.commands import ENTRY_POINT_GROUP, OneLineCommand
from epnas.errors import EpnasError, InvalidInput, SpecError, message_lines, one_line
from epnas.executors.local import LocalExecutor
from epnas.records import ChildRecord, SearchSummary, ranked_children
from epnas.repair import repair_store
from epnas.search import SearchFailed, SearchLoop, StepReport, position_text
from epnas.spec import ArchitectureSearch, load_search
from epnas.store import StoreError, StoreNotFound, StoreURIError, check_root, join_uri, open_store

console = Console(stderr=False)
errors = Console(stderr=True, soft_wrap=True)  # messages name files and fields: never cut them


PROGS = {"export": "epnas export", "report": "epnas report"}
"""How the error lines of a command begin: ``epnas: …`` unless it is named here."""


class EpnasGroup(click.Group):
    """The ``epnas`` group: the one place where an ``EpnasError`` raised by any command becomes
    its lines on stderr (``message_lines``) and its exit code (``EpnasError.exit_code``), with no
    traceback.  Any other exception propagates, so it is printed with its traceback.

    Besides its own commands it has those of the installed packages' ``epnas.commands`` entry
    points (``epnas.commands.ENTRY_POINT_GROUP``: ``train``, ``controller``), each imported only
    when it is run or listed; a command of its own wins over an entry point of the same name.  An
    entry point whose package is not installed (the trainer image has no ``controller``) is no
    command; any other import error propagates.  Its own commands are ``OneLineCommand``s: a bad
    flag is one line ``epnas: invalid input: …`` and exit 2, as for ``epnas train`` and
    ``epnas controller``."""

    command_class = OneLineCommand

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *(ep.name for ep in _plugins())})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        command = super().get_command(ctx, cmd_name)
        if command is not None:
            return command
        for ep in _plugins():
            if ep.name == cmd_name:
                return _load_plugin(ep)
        return None

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except EpnasError as err:
            for line in message_lines(err, PROGS.get(ctx.invoked_subcommand or "", "epnas")):
                click.echo(line, err=True)
            ctx.exit(err.exit_code)

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        """A bad flag of ``epnas`` itself is one line and exit 2, as for its commands; no
        arguments at all still prints the help."""
        try:
            return super().parse_args(ctx, args)
        except click.exceptions.NoArgsIsHelpError:
            raise
        except click.UsageError as err:
            self._bad_usage(ctx, err)

    def resolve_command(
        self, ctx: click.Context, args: list[str]
    ) -> tuple[str | None, click.Command | None, list[str]]:
        """An unknown command is one line (``epnas: No such command 'x'.``) and exit 2."""
        try:
            return super().resolve_command(ctx, args)
        except click.UsageError as err:
            self._bad_usage(ctx, err)

    def _bad_usage(self, ctx: click.Context, err: click.UsageError) -> NoReturn:
        problem = InvalidInput(one_line(err.format_message()))
        for line in message_lines(problem, "epnas"):
            click.echo(line, err=True)
        ctx.exit(problem.exit_code)


def _plugins() -> list[importlib.metadata.EntryPoint]:
    """The installed ``epnas.commands`` entry points."""
    return list(importlib.metadata.entry_points(group=ENTRY_POINT_GROUP))


def _load_plugin(ep: importlib.metadata.EntryPoint) -> click.Command | None:
    """The click command ``ep`` names; None when its package is not installed here."""
    try:
        command = ep.load()
    except ModuleNotFoundError as err:
        if err.name == ep.module.split(".")[0]:  # the package itself, not a module it imports
            return None
        raise
    if not isinstance(command, click.Command):
        raise TypeError(f"entry point {ep.name} = {ep.value} is not a click command")
    return command


def read_search(path: str) -> ArchitectureSearch:
    """Load and validate a search file.  Raises ``InvalidInput`` if it cannot be read, and a
    ``SpecError`` headed by its name listing every problem if it is not a valid search."""
    try:
        text = pathlib.Path(path).read_bytes()
    except OSError as err:
        raise InvalidInput(f"cannot read {path}: {err.strerror}") from None
    try:
        return load_search(text, source=path)
    except SpecError as err:
        count = len(err.problems)
        raise SpecError(
            err.problems, heading=f"{path} is not a valid ArchitectureSearch ({count} problem{'s' * (count > 1)}):"
        ) from None


def store_root(search: ArchitectureSearch, override: str | None) -> str:
    """``--store``, else the spec's ``store.uri``, else ``file://$PWD/runs``; a malformed one
    raises ``StoreURIError`` (exit 2) naming both places it may come from."""
    uri = override if override is not None else (search.spec.store.uri or pathlib.Path("runs").resolve().as_uri())
    try:
        return check_root(uri)
    except StoreURIError as err:
        raise StoreURIError(f"--store / spec.store.uri: {err}") from None


@click.group(cls=EpnasGroup)
@click.version_option(package_name="epnas")
def main() -> None:
    """EPNAS: efficient progressive neural architecture search under resource constraints."""


@main.command()
@click.argument("file", type=click.Path(dir_okay=False))
@click.option(
    "--store",
    "store_uri",
    help="Store root (file:///abs/dir or s3://bucket/prefix); default: spec.store.uri or ./runs.",
)
@click.option(
    "--parallelism",
    type=click.IntRange(min=1),
    help="Children trained at once (default: spec.parallelism or the CPU count).",
)
@click.option(
    "--trainer-command",
    help="Command that runs the trainer, split like a shell would (default: the venv's python -m child_trainer).",
)
@click.option("--quiet", is_flag=True, help="No progress bar.")
@click.option(
    "--repair",
    is_flag=True,
    help="Damaged state: move the damaged files aside (*.damaged), rebuild from what is intact, resume.",
)
def search(
    file: str, store_uri: str | None, parallelism: int | None, trainer_command: str | None, quiet: bool, repair: bool
) -> None:
    """Run (or resume) the search in FILE with children as local processes (``--repair``: ``epnas.repair``)."""
    spec_doc = read_search(file)
    root = store_root(spec_doc, store_uri)
    trainer = trainer_argv(trainer_command)
    search_uri = join_uri(root, spec_doc.name)
    try:
        store = open_store(search_uri, endpoint=spec_doc.spec.store.endpoint, region=spec_doc.spec.store.region)
        if repair:
            store = repair_store(
                store,
                spec_doc,
                search_uri,
                file,
                pin=_write_search_file,
                say=lambda line: errors.print(f"epnas: {line}", markup=False, highlight=False),
            )
        else:
            _write_search_file(store, spec_doc)
    except StoreError as err:
        raise StoreError(f"store {root}: {err}", transient=err.transient) from None
    executor = LocalExecutor(
        parallelism=parallelism or spec_doc.spec.parallelism,
        endpoint=spec_doc.spec.store.endpoint,
        trainer_command=trainer,
    )
    budget = spec_doc.spec.budget
    total = budget.episodes * spec_doc.spec.steps_per_episode * budget.branches
    if budget.max_children is not None:
        total = min(total, budget.max_children)
    with executor, _progress(quiet) as progress:  # the executor stops its warm workers on the way out
        task = progress.add_task("children", total=total)

        def on_step(report: StepReport) -> None:
            progress.update(
                task, completed=min(total, report.summary["children"]["total"]), description=progress_line(report)
            )

        loop = SearchLoop(spec_doc, store=store, store_uri=search_uri, executor=executor, on_step=on_step)
        try:
            summary = loop.run()
        except SearchFailed as err:
            progress.stop()
            print_summary(
                open_store(
                    search_uri, endpoint=spec_doc.spec.store.endpoint, region=spec_doc.spec.store.region
                ).get_json(SUMMARY)
            )
            raise EpnasError(f"search {spec_doc.name} failed: {err}") from None
        progress.update(task, completed=total, description=f"done: {summary['children']['total']} children")
    print_summary(summary)


def trainer_argv(command: str | None) -> list[str] | None:
    """``--trainer-command`` split like a shell would; an unparsable one, or a program that is
    not there, raises ``InvalidInput`` (exit 2) before anything is written."""
    if command is None:
        return None
    try:
        argv = shlex.split(command)
    except ValueError as err:
        raise InvalidInput(f"--trainer-command {command!r}: {err}") from None
    if not argv:
        raise InvalidInput("--trainer-command is empty")
    if shutil.which(argv[0]) is None:
        raise InvalidInput(
            f"--trainer-command: {argv[0]!r} is not an executable program (not on PATH, or not executable)"
        )
    return argv


def progress_line(report: StepReport) -> str:
    """``e1 s2  best feasible acc 0.963  feasible 9``, or ``best (infeasible) reward …`` before any feasible child."""
    s = report.summary
    head = f"episode {report.episode + 1}/{s['episodes']} step {report.step + 1}/{s['stepsPerEpisode']}"
    if s["bestFeasible"]:
        return f"{head}  best feasible acc {s['bestFeasible']['valAccuracy']:.3f}  feasible {s['feasibleCount']}"
    best = s.get("best")
    reward = best["reward"] if best else 0
    return f"{head}  no feasible child yet; best (infeasible) reward {reward:.3f}"


def _write_search_file(store, search: ArchitectureSearch) -> None:
    """Pin the spec (``epnas.checkpoint.pin_search``): a rerun that only extends the search
    continues it; any other difference raises ``InvalidInput`` naming every differing field
    (exit 2); a damaged stored spec raises ``CorruptState`` (exit 1)."""
    pinned = pin_search(store, search)
    if pinned.refused:
        raise InvalidInput(
            f"{store.uri} already holds search {search.name!r} with a different spec; these fields differ: {', '.join(pinned.refused)}. "
            "Only budget.episodes (up), budget.maxChildren, budget.maxFailedChildren, parallelism, finalTraining and trainer may change; "
            "use another name or store"
        )
    if pinned.extensions:
        errors.print(
            f"epnas: extending search {search.name!r}: {', '.join(pinned.extensions)} changed; continuing from its checkpoint",
            markup=False,
        )


class _NoProgress:
    def __enter__(self) -> _NoProgress:
        return self

    def __exit__(self, *exc) -> None:
        return None

    def add_task(self, *args, **kwargs) -> int:
        return 0

    def update(self, *args, **kwargs) -> None:
        return None

    def stop(self) -> None:
        return None


def _progress(quiet: bool):
    if quiet:
        return _NoProgress()
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("children"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
    )


def search_root(target: str, store_uri: str | None) -> str:
    """The URI of a search's root from TARGET: its search file (with ``--store``), its directory or its URI."""
    path = pathlib.Path(target)
    if path.is_file():
        search = read_search(target)
        return join_uri(store_root(search, store_uri), search.name)
    return path.resolve().as_uri() if "://" not in target else target


@main.command()
@click.argument("target")
@click.option("--store", "store_uri", help="Store root, when TARGET is a search file.")
@click.option("--child", help="The child to export (default: the best feasible child).")
@click.option(
    "--out", "out_dir", type=click.Path(file_okay=False), help="Directory to write (default: export/<search>-<child>)."
)
@click.option("--no-onnx", is_flag=True, help="Skip model.onnx (it needs the [export] extra).")
@click.option(
    "--allow-infeasible", is_flag=True, help="Export the best child even when no child satisfies the constraints."
)
def export(
    target: str, store_uri: str | None, child: str | None, out_dir: str | None, no_onnx: bool, allow_infeasible: bool
) -> None:
    """Export a trained child of a search (TARGET: its search file, directory or URI) as TorchScript,
    ONNX (checked with onnxruntime), safetensors + arch.json and a model card."""
    from epnas.export import choose_child, export_child

    uri = search_root(target, store_uri)
    store = open_store(uri)
    if out_dir is None:
        chosen = choose_child([ChildRecord.from_json(r) for r in read_history(store, 10**9)], child, allow_infeasible)
        out_dir = str(pathlib.Path("export") / f"{uri.rstrip('/').rsplit('/', 1)[-1]}-{chosen.child}")
    done = export_child(store, pathlib.Path(out_dir), child, onnx=not no_onnx, allow_infeasible=allow_infeasible)
    card = done.card
    console.print(
        f"exported {card['search']}/{done.child} (val {card['valAccuracy']:.4f}, test {card['testAccuracy']:.4f}, "
        f"{'feasible' if card['feasible'] else 'INFEASIBLE'}) to {done.out}: {', '.join(done.files)}",
        highlight=False,
    )
    if done.onnx_max_abs_diff is not None:
        console.print(f"onnxruntime agrees with torch to {done.onnx_max_abs_diff:.2g}", highlight=False)


@main.command()
@click.argument("target")
@click.option("--store", "store_uri", help="Store root, when TARGET is a search file.")
@click.option(
    "--out", "out_dir", type=click.Path(file_okay=False), help="Directory to write (default: report/<search>)."
)
def report(target: str, store_uri: str | None, out_dir: str | None) -> None:
    """Write report.html (self-contained) and its PNGs for a search (TARGET: its search file, directory or URI):
    every child's accuracy and reward, feasible children per episode, Pareto fronts with the constraints,
    the top children, the best network drawn, policy loss and entropy."""
    from epnas.report import write_report

    uri = search_root(target, store_uri)
    out = pathlib.Path(out_dir) if out_dir else pathlib.Path("report") / uri.rstrip("/").rsplit("/", 1)[-1]
    done = write_report(open_store(uri), out)
    console.print(f"report: {done.html} ({len(done.images)} plots)", highlight=False)


@main.command()
@click.argument("target")
@click.option("--store", "store_uri", help="Store root, when TARGET is a search file.")
@click.option(
    "--top",
    "top",
    type=click.IntRange(min=0),
    default=5,
    show_default=True,
    help="How many of the best children to list.",
)
@click.option(
    "--json", "as_json", is_flag=True, help="Print the summary, the top children and the failed ones as JSON."
)
def status(target: str, store_uri: str | None, top: int, as_json: bool) -> None:
    """Summarise a running or finished search (TARGET: its search file, its directory or its URI):
    the best feasible child, the top children, children by status and why the failed ones failed."""
    search_uri = search_root(target, store_uri)
    store = open_store(search_uri)
    try:
        summary: SearchSummary = read_state_json(store, SUMMARY)  # a damaged one raises CorruptState naming it
    except StoreNotFound:
        raise StoreNotFound(f"no search state under {search_uri} (no {SUMMARY})") from None
    records = [ChildRecord.from_json(r) for r in read_history(store, 10**9)]
    ranked = ranked_children(records)[:top]
    failed = [r for r in records if r.status == "failed"]
    if as_json:

        def brief(r: ChildRecord) -> dict[str, Any]:
            return {
                "child": r.child,
                "status": r.status,
                "feasible": r.feasible,
                "valAccuracy": r.val_accuracy,
                "testAccuracy": r.test_accuracy,
                "reward": r.reward,
                "metrics": r.metrics,
                "hash": r.hash,
            }

        click.echo(
            json.dumps(
                {
                    "summary": summary,
                    "top": [brief(r) for r in ranked],
                    "failed": [{"child": r.child, "exitCode": r.exit_code, "reason": r.reason} for r in failed],
                },
                indent=2,
            )
        )
        return
    print_summary(summary)
    if ranked:
        console.print(top_table(ranked))
    for r in failed[:10]:
        console.print(f"[red]failed[/red] {r.child}: exit code {r.exit_code}, {r.reason}", highlight=False)
    if len(failed) > 10:
        console.print(f"… and {len(failed) - 10} more failed children (epnas status --json lists them all)")


def top_table(records: list[ChildRecord]) -> Table:
    table = Table(title="Top children (feasible first)", show_header=True, header_style="bold")
    for column in ("#", "child", "feasible", "val acc", "test acc", "params", "FLOPs", "FLOPs/B"):
        table.add_column(column, justify="left" if column in ("child", "feasible") else "right", no_wrap=True)
    for i, r in enumerate(records, 1):
        m = r.metrics
        table.add_row(
            str(i),
            r.child,
            "yes" if r.feasible else "no",
            f"{r.val_accuracy:.4f}",
            f"{r.test_accuracy:.4f}",
            f"{m.get('params', 0):,}",
            _si(m.get("flops", 0)),
            f"{m.get('compute_intensity', 0):.2f}",
        )
    return table


def _si(value: float) -> str:
    """``2649354`` → ``2.65M``."""
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if value >= scale:
            return f"{value / scale:.3g}{unit}"
    return f"{value:g}"


def print_summary(summary: SearchSummary) -> None:
    """The best feasible architecture, its metrics, and where the artifacts are."""
    c = summary["children"]
    console.print(
        f"[bold]{summary['search']}[/bold]: {summary['phase']}, {position_text(summary)}; children {c['total']} "
        f"({c['succeeded']} trained, {c['cached']} cached, {c['failed']} failed); feasible {summary['feasibleCount']}"
    )
    best = summary.get("bestFeasible")
    if best is None:
        console.print("[yellow]No feasible architecture yet.[/yellow]")
        best = summary.get("best")
        if best is None:
            return
        console.print("Best (infeasible) so far:")
    else:
        console.print("[bold green]Best feasible architecture[/bold green]:")
    m = best["metrics"]
    console.print(
        f"  child {best['child']}  hash {best['hash']}  val acc {best['valAccuracy']:.4f}  test acc {best['testAccuracy']:.4f}  reward {best['reward']:.4f}\n"
        f"  params {m['params']:,} ({m['size_bytes'] / 1024:.1f} KiB)  FLOPs {m['flops']:,}  compute intensity {m['compute_intensity']:.2f} FLOPs/byte"
    )
    console.print(arch_table(best["arch"]))
    for final in summary.get("final") or []:
        if final["status"] == "succeeded":
            console.print(
                f"[bold green]Final training[/bold green] of {final['child']}: val acc {final['valAccuracy']:.4f}  "
                f"test acc {final['testAccuracy']:.4f} after {final['epochsRun']} epochs ({final['dir']}/)",
                highlight=False,
                soft_wrap=True,
            )
        else:
            console.print(
                f"[red]Final training of {final['child']} failed[/red]: {final['reason']}",
                highlight=False,
                soft_wrap=True,
            )
    console.print(
        f"Artifacts: {summary['store']}  (children/, weights/, state/{', final/' if summary.get('final') else ''})"
    )


def arch_table(arch: dict) -> Table:
    table = Table(show_header=True, header_style="bold")
    if "layers" in arch:
        fields = [
            "op",
            "src1",
            "src2",
            "merge",
            "channels",
            "width",
            "freq_width",
            "stride_time",
            "stride_freq",
            "dilation",
            "activation",
            "directions",
        ]
        rows = arch["layers"]
    else:
        fields = ["type", "src1", "src2", "channels", "width", "pool", "activation", "propagate"]
        rows = arch["cell"]["branches"]
    used = [f for f in fields if any(f in row for row in rows)]
    table.add_column("#")
    for f in used:
        table.add_column(f)
    for i, row in enumerate(rows):
        shown = {f: row.get(f, "") for f in used}
        if "merge" in shown and row.get("src2") is None:
            shown["merge"] = ""  # no skip, nothing merged
        table.add_row(str(i), *[str(v) for v in shown.values()])
    return table


@main.command()
@click.argument("file", type=click.Path(dir_okay=False))
def validate(file: str) -> None:
    """Check a search file; print every problem and exit 2 if there are any."""
    search = read_search(file)
    console.print(
        f"{file}: valid ArchitectureSearch {search.name!r} ({search.spec.search_space}, {search.spec.strategy})"
    )


if __name__ == "__main__":
    main()

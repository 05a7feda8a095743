"""``epnas export``: a trained child of a search, out of the store, as a model a user can ship.

From a search root (``file://`` or ``s3://``) and a child (default: the search's final model,
``summary.finalModel``, when ``finalTraining`` ran; else the best feasible child,
``epnas.records.ranked_children``), ``export_child`` writes into a directory:

* ``model.pt``           TorchScript (``torch.jit.trace``, eval mode): loads with plain
  ``torch.jit.load`` in a process that has no ``epnas`` installed;
* ``model.onnx``         ONNX (opset ``OPSET``, batch dimension dynamic), checked against the
  torch model's logits with onnxruntime on a seeded batch (``ONNX_TOLERANCE``);
* ``weights.safetensors`` + ``arch.json``: the state dict and the network as the trainer built
  it (the child's architecture with its ``channelFactor`` applied);
* ``model.json`` and ``README.md``: the model card — where it came from, input shape and classes,
  metrics, each constraint and whether it holds, validation and test accuracy, training regime.

A child's stored weights must load into the rebuilt network exactly (every tensor, every
shape): anything else is ``CorruptState`` naming the file.  ONNX needs the ``[export]`` extra
(``onnx``, ``onnxruntime``, ``onnxscript``); without it ``ExportError`` says what to install,
or ``onnx=False`` skips that file.
"""

from __future__ import annotations

import json
import logging
import pathlib
import warnings
from dataclasses import dataclass, field
from typing import Any

import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save_file

from epnas.arch import with_channel_factor
from epnas.build import build_model
from epnas.checkpoint import SEARCH_FILE, SUMMARY, read_history
from epnas.errors import CorruptState, EpnasError
from epnas.metrics import compute_metrics
from epnas.records import ChildRecord, ranked_children
from epnas.reward import compute_reward
from epnas.spec import geometry_of, load_search
from epnas.store import Store, StoreError, StoreNotFound, join_uri
from epnas.task import ChildResult, ChildTask, load_result, load_task

OPSET = 18
ONNX_TOLERANCE = 1e-4
"""Largest absolute difference allowed between onnxruntime's and torch's logits."""
CHECK_BATCH = 4


class ExportError(EpnasError, RuntimeError):
    """The export cannot be made (no such child, no feasible child, a missing extra); the message says why.
    A fault, exit 1."""

    reason = "ExportError"


@dataclass
class Exported:
    """What ``export_child`` wrote: the directory, the child, its files and the largest ONNX difference."""

    out: pathlib.Path
    child: str
    files: list[str] = field(default_factory=list)
    onnx_max_abs_diff: float | None = None
    card: dict[str, Any] = field(default_factory=dict)


def choose_child(records: list[ChildRecord], child: str | None, allow_infeasible: bool = False) -> ChildRecord:
    """The record of ``child``, or the best feasible one; a cached child stands for the one it repeats."""
    by_id = {r.child: r for r in records}
    if child is not None:
        if child not in by_id:
            raise ExportError(f"no child {child!r} in this search ({len(records)} children)")
        record = by_id[child]
        if record.status == "failed":
            raise ExportError(f"child {child} failed ({record.reason}): it has no weights to export")
    else:
        ranked = ranked_children(records)
        if not ranked:
            raise ExportError("no child of this search finished training")
        record = ranked[0]
        if not record.feasible and not allow_infeasible:
            raise ExportError(
                f"no child of this search satisfies its constraints (the best, {record.child}, does not); "
                "name one with --child, or pass --allow-infeasible"
            )
    if record.cached_from:
        record = by_id.get(record.cached_from, record)
    return record


def export_child(
    store: Store, out: pathlib.Path, child: str | None = None, *, onnx: bool = True, allow_infeasible: bool = False
) -> Exported:
    """Export ``child`` (default: the best feasible one) of the search rooted at ``store`` into ``out``."""
    records = [ChildRecord.from_json(r) for r in read_history(store, 10**9)]
    if not records:
        raise ExportError(f"no search history under {store.uri}")
    final = final_model(store) if child is None else None
    record = choose_child(records, final["child"] if final else child, allow_infeasible)
    directory = final["dir"] if final else f"children/{record.child}"
    task, result, state = _child_files(store, directory)
    arch = with_channel_factor(task.arch, task.training.channel_factor)
    shape, classes = geometry_of(task.dataset, task.arch.space, task.training.resolution)
    if shape is None or classes is None:
        raise ExportError(
            f"children/{record.child}/arch.json does not say its input shape and classes (npz without inputShape)"
        )
    model = build_model(arch, shape, classes)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise CorruptState(
            f"{join_uri(store.uri, f'{directory}/weights.safetensors')} does not fit "
            f"its architecture: {str(err).splitlines()[0]}"
        ) from None
    model.eval()
    out.mkdir(parents=True, exist_ok=True)
    example = torch.randn(CHECK_BATCH, *shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad(), warnings.catch_warnings():
        # a network's shapes are fixed by its input size: the tracer's "treated as a constant" is what we want,
        # and TorchScript is what plain torch loads anywhere (torch.export needs the same torch version)
        warnings.simplefilter("ignore")
        expected = model(example)
        traced = torch.jit.freeze(torch.jit.trace(model, example[:1], check_trace=False))
        torch.jit.save(traced, str(out / "model.pt"))
        scripted_diff = (torch.jit.load(str(out / "model.pt"))(example) - expected).abs().max().item()
    files = ["model.pt"]
    if scripted_diff > ONNX_TOLERANCE:
        raise ExportError(f"the TorchScript model differs from the torch model by {scripted_diff:.3g}")
    onnx_diff = None
    if onnx:
        onnx_diff = _export_onnx(model, example, expected, out / "model.onnx")
        files.append("model.onnx")
    save_file(
        {k: v.contiguous() for k, v in model.state_dict().items()},
        str(out / "weights.safetensors"),
        metadata={"child": record.child, "arch_hash": task.arch.hash},
    )
    (out / "arch.json").write_text(arch.to_json() + "\n")
    card = model_card(store, record, task, result, shape, classes, onnx_diff, directory)
    (out / "model.json").write_text(json.dumps(card, indent=2, sort_keys=True) + "\n")
    (out / "README.md").write_text(card_markdown(card))
    files += ["weights.safetensors", "arch.json", "model.json", "README.md"]
    return Exported(out, record.child, files, onnx_diff, card)


def final_model(store: Store) -> dict[str, Any] | None:
    """The summary's ``finalModel`` (the best final-trained child), if final training ran."""
    try:
        summary = store.get_json(SUMMARY)
    except StoreNotFound:
        return None
    except StoreError as err:
        raise CorruptState(f"{join_uri(store.uri, SUMMARY)} is damaged: {err}") from None
    final = summary.get("finalModel") if isinstance(summary, dict) else None
    return final if isinstance(final, dict) and "dir" in final and "child" in final else None


def _child_files(store: Store, directory: str) -> tuple[ChildTask, ChildResult, dict[str, torch.Tensor]]:
    paths = [f"{directory}/{name}" for name in ("arch.json", "result.json", "weights.safetensors")]
    raw = []
    for key in paths:
        try:
            raw.append(store.get_bytes(key))
        except StoreNotFound:
            raise ExportError(f"{join_uri(store.uri, key)} is missing: the child cannot be exported") from None
    loaded: list[Any] = []
    for key, data, read in zip(paths, raw, (load_task, load_result, load_safetensors)):
        try:
            loaded.append(read(data))
        except Exception as err:  # SpecError, SafetensorError: the file is damaged
            raise CorruptState(
                f"{join_uri(store.uri, key)} is damaged: {str(err).splitlines()[0] if str(err) else type(err).__name__}"
            ) from None
    task, result, state = loaded
    if result.arch_hash != task.arch.hash:
        raise CorruptState(
            f"{join_uri(store.uri, paths[1])} is for architecture {result.arch_hash}, not {task.arch.hash}"
        )
    return task, result, state


def _export_onnx(model: torch.nn.Module, example: torch.Tensor, expected: torch.Tensor, path: pathlib.Path) -> float:
    try:
        import onnx
        import onnxruntime
    except ImportError:
        raise ExportError(
            "ONNX export needs the [export] extra: pip install 'epnas[export]' (or pass --no-onnx)"
        ) from None
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)  # "torchvision is not installed" is not news
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            model,
            (example[:2],),
            dynamo=True,
            input_names=["input"],
            output_names=["logits"],
            opset_version=OPSET,
            dynamic_shapes=({0: torch.export.Dim("batch", min=1)},),
            verbose=False,
        )
    assert program is not None, (
        "the dynamo exporter returns its program (only the legacy one, given a file, returns None)"
    )
    program.save(str(path))
    onnx.checker.check_model(onnx.load(str(path)))
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(["logits"], {"input": example.numpy()})[0]
    diff = float(abs(torch.from_numpy(got) - expected).max())
    if diff > ONNX_TOLERANCE:
        raise ExportError(f"onnxruntime's logits differ from torch's by {diff:.3g} (> {ONNX_TOLERANCE:g})")
    return diff


def model_card(
    store: Store,
    record: ChildRecord,
    task: ChildTask,
    result: ChildResult,
    shape: tuple[int, int, int],
    classes: int,
    onnx_diff: float | None,
    directory: str,
) -> dict[str, Any]:
    """The card's facts: source, input, metrics, constraints (each with whether it holds), accuracies, regime."""
    metrics = compute_metrics(with_channel_factor(task.arch, task.training.channel_factor), shape, classes)
    constraints: list[dict[str, Any]] = []
    spec = _search_spec(store)
    if spec is not None:
        reward = compute_reward(result.val_accuracy, metrics, list(spec.constraints))
        for c in spec.constraints:
            value = metrics.value(c.metric)
            constraints.append(
                {
                    "metric": c.metric,
                    "min": c.min,
                    "max": c.max,
                    "value": value,
                    "holds": reward.violations[c.metric] <= 0,
                }
            )
    return {
        "search": task.search,
        "child": record.child,
        "source": join_uri(store.uri, directory),
        "finalTraining": directory.startswith("final/"),
        "archHash": task.arch.hash,
        "space": task.arch.space,
        "inputShape": list(shape),
        "classes": classes,
        "metrics": metrics.as_dict(),
        "constraints": constraints,
        "feasible": all(c["holds"] for c in constraints) if constraints else record.feasible,
        "valAccuracy": result.val_accuracy,
        "testAccuracy": result.test_accuracy,
        "training": {
            "regime": task.training.regime,
            "epochs": result.epochs_run,
            "dataset": task.dataset.kind,
            "seed": task.seed,
        },
        "onnxMaxAbsDiff": onnx_diff,
    }


def _search_spec(store: Store):
    try:
        return load_search(store.get_bytes(SEARCH_FILE), source=join_uri(store.uri, SEARCH_FILE)).spec
    except (StoreNotFound, StoreError):
        return None


def card_markdown(card: dict[str, Any]) -> str:
    """The model card as Markdown (``README.md`` of the export)."""
    m = card["metrics"]
    lines = [
        f"# {card['search']} / {card['child']}",
        "",
        f"Found by EPNAS in search `{card['search']}`, child `{card['child']}` (`{card['source']}`), space `{card['space']}`.",
        "",
        f"- input: `{card['inputShape']}` (C, H, W), batch first; output: {card['classes']} logits",
        f"- validation accuracy {card['valAccuracy']:.4f}, test accuracy {card['testAccuracy']:.4f} "
        f"({card['training']['regime']} regime, {card['training']['epochs']} epochs on {card['training']['dataset']})",
        f"- parameters {m['params']:,}, FLOPs {m['flops']:,}, compute intensity {m['compute_intensity']:.2f} FLOPs/byte",
    ]
    if card["constraints"]:
        lines += ["", "| constraint | value | holds |", "|---|---|---|"]
        for c in card["constraints"]:
            bound = " and ".join(
                s
                for s in (
                    f"≥ {c['min']:g}" if c["min"] is not None else "",
                    f"≤ {c['max']:g}" if c["max"] is not None else "",
                )
                if s
            )
            lines.append(f"| {c['metric']} {bound} | {c['value']:g} | {'yes' if c['holds'] else 'no'} |")
    lines += [
        "",
        "Files: `model.pt` (TorchScript), `model.onnx` (ONNX, when exported), `weights.safetensors` + `arch.json`.",
        "",
        "```python",
        "import torch",
        "model = torch.jit.load('model.pt')",
        f"logits = model(torch.randn(1, {', '.join(str(d) for d in card['inputShape'])}))",
        "```",
        "",
    ]
    return "\n".join(lines)

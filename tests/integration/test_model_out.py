"""A model out of a real search: ``epnas export`` writes the best feasible child as TorchScript that
runs without ``epnas``, ONNX that onnxruntime agrees with, safetensors + arch.json and a model card;
``epnas report`` writes an HTML page that a real headless Chromium renders with every plot."""

from __future__ import annotations

import json
import pathlib
import re
import shutil
import subprocess
import sys

import numpy as np
import onnxruntime
import pytest
import torch
from safetensors.torch import load_file, save_file

HERE = pathlib.Path(__file__).parent
TINY = HERE / "searches" / "tiny-synthetic.yaml"
EPNAS = [sys.executable, "-m", "epnas.cli"]

# Runs in a fresh interpreter where importing epnas (or child_trainer) fails: the TorchScript
# file must need nothing but torch.
WITHOUT_EPNAS = """
import sys, importlib.abc
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in ('epnas', 'child_trainer', 'controller'):
            raise ImportError('epnas is not installed here')
sys.meta_path.insert(0, Block())
import torch
from safetensors.torch import load_file
model = torch.jit.load(sys.argv[1])
x = load_file(sys.argv[2])["x"]
print(repr(model(x).tolist()))
assert 'epnas' not in sys.modules
"""


@pytest.fixture(scope="module")
def finished_search(tmp_path_factory) -> pathlib.Path:
    """tiny-synthetic, then (an extension of the finished search) final training of its best child."""
    root = tmp_path_factory.mktemp("export")
    store = root / "store"
    done = subprocess.run(
        [*EPNAS, "search", str(TINY), "--store", store.as_uri(), "--parallelism", "2", "--quiet"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    final = root / "final.yaml"
    final.write_text(TINY.read_text() + "  finalTraining: {top: 1, epochs: 3}\n")
    done = subprocess.run(
        [*EPNAS, "search", str(final), "--store", store.as_uri(), "--parallelism", "2"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Final training of" in done.stdout and "after 3 epochs (final/" in done.stdout
    return store / "tiny-synthetic"


def test_export_of_the_best_feasible_child_runs_without_epnas_and_in_onnxruntime(finished_search, tmp_path) -> None:
    out = tmp_path / "model"
    done = subprocess.run(
        [*EPNAS, "export", str(finished_search), "--out", str(out)], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert sorted(p.name for p in out.iterdir()) == [
        "README.md",
        "arch.json",
        "model.json",
        "model.onnx",
        "model.pt",
        "weights.safetensors",
    ]
    card = json.loads((out / "model.json").read_text())
    status = json.loads(
        subprocess.run(
            [*EPNAS, "status", str(finished_search), "--json", "--top", "1"],
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        ).stdout
    )
    best = status["top"][0]
    final = status["summary"]["finalModel"]
    assert card["child"] == best["child"] == final["child"] and best["feasible"]
    # the export is the final model (trained again from scratch, 3 standard-regime epochs), not the search's child
    assert card["finalTraining"] is True and card["source"].endswith(f"/final/{best['child']}")
    assert card["valAccuracy"] == final["valAccuracy"] and card["training"] == {
        "regime": "standard",
        "epochs": 3,
        "dataset": "synthetic",
        "seed": 4,
    }
    assert card["feasible"] is True and card["constraints"] == [
        {"metric": "modelSize", "min": None, "max": 20000.0, "value": best["metrics"]["params"], "holds": True}
    ]
    assert card["inputShape"] == [1, 8, 8] and card["classes"] == 4
    assert "val" in done.stdout

    x = torch.randn(5, 1, 8, 8, generator=torch.Generator().manual_seed(7))
    save_file({"x": x}, str(tmp_path / "x.safetensors"))  # safetensors, never pickle
    fresh = subprocess.run(
        [sys.executable, "-c", WITHOUT_EPNAS, str(out / "model.pt"), str(tmp_path / "x.safetensors")],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert fresh.returncode == 0, fresh.stderr
    scripted = torch.tensor(eval(fresh.stdout))
    assert scripted.shape == (5, 4)
    session = onnxruntime.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    (onnx_logits,) = session.run(None, {"input": x.numpy()})
    assert np.abs(onnx_logits - scripted.numpy()).max() < 1e-4
    # the exported weights are the child's trained weights, not a fresh initialisation
    trained = load_file(str(finished_search / "final" / card["child"] / "weights.safetensors"))
    exported = load_file(str(out / "weights.safetensors"))
    assert trained and trained.keys() <= exported.keys() and all(torch.equal(trained[k], exported[k]) for k in trained)


def test_export_names_a_missing_child_and_a_damaged_weights_file(finished_search, tmp_path) -> None:
    missing = subprocess.run(
        [*EPNAS, "export", str(finished_search), "--child", "e009-s09-c09", "--out", str(tmp_path / "a")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert missing.returncode == 1 and "no child 'e009-s09-c09'" in missing.stderr
    damaged = tmp_path / "damaged"
    subprocess.run(["cp", "-r", str(finished_search), str(damaged)], check=True)
    child = json.loads(
        subprocess.run(
            [*EPNAS, "status", str(damaged), "--json", "--top", "1"],
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        ).stdout
    )["top"][0]["child"]
    weights = damaged / "final" / child / "weights.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    done = subprocess.run(
        [*EPNAS, "export", str(damaged), "--out", str(tmp_path / "b")], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 1 and f"final/{child}/weights.safetensors is damaged" in done.stderr, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and "Traceback" not in done.stderr


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return shutil.which(name)
    pytest.fail("the report test needs a headless Chromium: apt-get install chromium (scripts/test-deps installs it)")


def test_report_renders_every_plot_in_a_real_browser(finished_search, tmp_path) -> None:
    out = tmp_path / "report"
    done = subprocess.run(
        [*EPNAS, "report", str(finished_search), "--out", str(out)], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stdout + done.stderr
    pngs = ["children.png", "feasible.png", "pareto.png", "best.png", "policy.png"]
    assert sorted(p.name for p in out.iterdir()) == sorted([*pngs, "report.html"])
    page = (out / "report.html").read_text()
    assert page.count("data:image/png;base64,") == len(pngs) and 'src="http' not in page and "<link" not in page
    status = json.loads(
        subprocess.run(
            [*EPNAS, "status", str(finished_search), "--json", "--top", "10"],
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        ).stdout
    )
    table = re.findall(r"<tr><td>(\d+)</td><td>([a-z0-9-]+)</td>", page)
    assert [child for _, child in table] == [r["child"] for r in status["top"]]
    assert "modelSize ≤ 20000" in page and "Succeeded" in page
    browser = [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=10000"]
    # the page counts its images that decoded to a real size once loaded; a busy machine gets 3 tries
    for _ in range(3):
        dom = subprocess.run(
            [*browser, "--dump-dom", (out / "report.html").as_uri()], capture_output=True, text=True, timeout=120
        )
        if "data-rendered=" in dom.stdout:
            break
    assert f'<body data-rendered="{len(pngs)}">' in dom.stdout, dom.stdout[-1000:] + dom.stderr[-1000:]
    shot = tmp_path / "screenshot.png"
    subprocess.run(
        [*browser, "--window-size=1100,3000", f"--screenshot={shot}", (out / "report.html").as_uri()],
        capture_output=True,
        timeout=120,
        check=True,
    )
    assert shot.stat().st_size > 50_000  # a page of plots, not a blank one (blank: about 10 kB)

"""``spec.trainer.queueName`` (Kueue): the Job manifest with and without it, its validation, and the
chart default ``trainer.queueName`` reaching the Job through ``--trainer-defaults`` (``helm template``
with the pinned helm binary; no cluster). Kueue admitting such Jobs: tests/e2e/test_kueue.py."""

from __future__ import annotations

import pathlib
import subprocess

import pydantic
import pytest
import yaml
from harness import binaries

from controller.jobs import LABEL_QUEUE, Owner, job_manifest
from controller.main import trainer_defaults_arg
from epnas.errors import InvalidInput
from epnas.executors.base import ChildRun
from epnas.spec import SearchSpec, parse_search, with_trainer_defaults

CHART = pathlib.Path(__file__).resolve().parents[3] / "helm" / "epnas"
OWNER = Owner("s", "team-a", "uid-1")
RUN = ChildRun(
    search="s",
    child="e000-s00-c00",
    arch_uri="s3://b/a.json",
    out_uri="s3://b/o",
    weights_uri=None,
    timeout_s=60,
    episode=0,
    step=0,
    index=0,
)
LABELS = {"epnas.io/search": "s", "epnas.io/episode": "0", "epnas.io/step": "0", "epnas.io/child": "e000-s00-c00"}


def job_for(**trainer) -> dict:
    spec = SearchSpec.model_validate(
        {"trainer": {"activeDeadlineSeconds": 900, **trainer}, "store": {"uri": "s3://b/p"}}
    )
    return job_manifest(RUN, spec=spec, owner=OWNER)


def test_without_a_queue_the_job_starts_at_once_and_has_no_kueue_label() -> None:
    job = job_for()
    assert "suspend" not in job["spec"]
    assert job["metadata"]["labels"] == LABELS and LABEL_QUEUE not in job["spec"]["template"]["metadata"]["labels"]


def test_with_a_queue_the_job_is_created_suspended_with_kueues_queue_label() -> None:
    job = job_for(queueName="gpu-queue")
    assert LABEL_QUEUE == "kueue.x-k8s.io/queue-name"
    assert job["spec"]["suspend"] is True
    assert job["metadata"]["labels"] == {**LABELS, LABEL_QUEUE: "gpu-queue"}
    # the pods are the Job's: Kueue admits the Job, not its pods
    assert job["spec"]["template"]["metadata"]["labels"] == LABELS
    # the time limit counts from the pod's start, so waiting suspended for admission never counts
    assert (
        "activeDeadlineSeconds" not in job["spec"] and job["spec"]["template"]["spec"]["activeDeadlineSeconds"] == 900
    )
    # everything else is as without a queue
    plain = job_for()
    assert {k: v for k, v in job["spec"].items() if k != "suspend"} == plain["spec"]


@pytest.mark.parametrize("bad", ["GPU", "-q", "q-", "a b", "q_1", "x" * 64, ""])
def test_a_queue_name_that_cannot_be_a_local_queue_or_label_value_is_refused(bad: str) -> None:
    with pytest.raises(pydantic.ValidationError) as err:
        job_for(queueName=bad)
    assert "queueName" in str(err.value) or "queue_name" in str(err.value)
    with pytest.raises(InvalidInput, match="queueName"):
        trainer_defaults_arg(f'{{"queueName": "{bad}"}}')


def test_an_installation_default_queue_applies_unless_the_search_names_its_own() -> None:
    defaults = trainer_defaults_arg('{"queueName": "team-queue"}')

    def search(trainer: dict):
        return with_trainer_defaults(
            parse_search(
                {
                    "apiVersion": "epnas.io/v1alpha1",
                    "kind": "ArchitectureSearch",
                    "metadata": {"name": "s"},
                    "spec": {"trainer": trainer},
                }
            ),
            defaults,
        )

    assert job_manifest(RUN, spec=search({}).spec, owner=OWNER)["metadata"]["labels"][LABEL_QUEUE] == "team-queue"
    own = job_manifest(RUN, spec=search({"queueName": "urgent"}).spec, owner=OWNER)
    assert own["metadata"]["labels"][LABEL_QUEUE] == "urgent" and own["spec"]["suspend"] is True


def _trainer_defaults(*helm_args: str) -> dict:
    try:
        helm = binaries.require("helm")
    except binaries.MissingBinaryError as error:
        pytest.fail(str(error), pytrace=False)
    rendered = subprocess.run(
        [str(helm), "template", "r", str(CHART), "-n", "team-a", "--kube-version", "1.37.0", *helm_args],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    deployment = next(doc for doc in yaml.safe_load_all(rendered) if doc and doc["kind"] == "Deployment")
    (arg,) = [
        a
        for a in deployment["spec"]["template"]["spec"]["containers"][0]["args"]
        if a.startswith("--trainer-defaults=")
    ]
    return trainer_defaults_arg(arg.split("=", 1)[1])


def test_the_charts_trainer_queue_name_becomes_the_jobs_queue_and_a_search_overrides_it() -> None:
    assert "queueName" not in _trainer_defaults()  # the chart's default: no Kueue
    defaults = _trainer_defaults("--set", "trainer.queueName=gpu-pool")
    assert defaults["queueName"] == "gpu-pool"

    def job(trainer: dict) -> dict:
        search = with_trainer_defaults(
            parse_search(
                {
                    "apiVersion": "epnas.io/v1alpha1",
                    "kind": "ArchitectureSearch",
                    "metadata": {"name": "s"},
                    "spec": {"trainer": trainer},
                }
            ),
            defaults,
        )
        return job_manifest(RUN, spec=search.spec, owner=OWNER)

    from_chart = job({"gpu": 0})
    assert from_chart["spec"]["suspend"] is True and from_chart["metadata"]["labels"][LABEL_QUEUE] == "gpu-pool"
    assert job({"gpu": 0, "queueName": "other"})["metadata"]["labels"][LABEL_QUEUE] == "other"

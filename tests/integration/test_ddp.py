"""Distributed training: two CPU ranks (gloo) train a tiny Bayes-PFL through Lightning's own DDP strategy.

Issue requirement: training scales past one machine through Lightning's strategies with no code of ours in the
way: no module-level state that breaks when the model is pickled to worker processes, losses reduced correctly
across ranks, and both ranks end with the same weights.

``ddp_helpers.py`` (run as a script, in its own interpreter) trains for two epochs of two steps on each of two
ranks: stage 1 in the first epoch, stage 2 (the image branch, the second optimiser) in the second. It uses
``DDPStrategy(process_group_backend="gloo", find_unused_parameters=True)``: the two stages train disjoint
parameter sets, so every step leaves some parameters without a gradient and DDP refuses such a step unless
``find_unused_parameters=True`` (on GPUs: ``strategy="ddp_find_unused_parameters_true"``). Both of Lightning's
launchers are covered:

* ``spawn`` (``ddp_spawn``): the trainer, model and datamodule are pickled into fresh interpreters, which is
  what catches module-level state and unpicklable attributes;
* ``popen`` (the default ``ddp``): the script is re-run per rank, as on a multi-GPU machine or across nodes.

The ``popen`` run also switches on the three options of the human-free paper (synthetic anomalies, meta guidance,
locality-aware attention): meta guidance computes a second gradient outside DDP's reducer, which must be averaged
across ranks for the ranks to stay identical.

Each rank writes its weights before and after training, its own losses and images, and the trainer's final
metrics; the tests below compare the two ranks. Both ranks are seeded alike, so the weights could only agree
without gradient synchronisation if the ranks saw the same data: a test checks they did not.
"""

from __future__ import annotations

import json
import os
import pickle
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

import anomalib_bayes_pfl
from anomalib_bayes_pfl import BayesPFL
from anomalib_bayes_pfl.demo import demo_datamodule

HELPERS = Path(__file__).with_name("ddp_helpers.py")
"""The training script; each rank writes ``rank{N}.pt`` (and the spawn launcher ``main.pt``) to its output folder."""

RUN_TIMEOUT_S = 300
"""Generous limit for one two-rank run (about 20 s on two cores); the script's own collective timeout is 120 s."""

SEED = 0

LAUNCHER_OPTIONS = {
    "spawn": {},
    "popen": {"synthetic_anomalies": True, "meta_guidance": True, "locality_window": 3, "locality_layers": [4]},
}
"""Model options per launcher run: the plain model, and the human-free options."""

STAGE1_PREFIXES = (
    "prompt_bank.",
    "prompt_flow.",
    "rca.",
    "temperature_image",
    "temperature_pixel",
    "image_branch.class_mapping.",
)
"""Head parts trained in stage 1 (first optimiser)."""

STAGE2_PREFIXES = ("image_branch.image_mapping.", "image_branch.pooling.")
"""Head parts used and trained only in stage 2 (second optimiser)."""

LAUNCH_VARIABLES = frozenset(
    {
        "MASTER_ADDR",
        "MASTER_PORT",
        "NODE_RANK",
        "LOCAL_RANK",
        "GLOBAL_RANK",
        "RANK",
        "GROUP_RANK",
        "WORLD_SIZE",
        "LOCAL_WORLD_SIZE",
    },
)
"""Variables a surrounding launcher may have set; the run must pick its own rendezvous."""


def _worker_env() -> dict[str, str]:
    """The test's environment without launcher/cluster settings, one thread per rank, and this package first."""
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in LAUNCH_VARIABLES and not key.startswith(("PL_", "SLURM_", "TORCHELASTIC_", "LSB_"))
    }
    package_parent = str(Path(anomalib_bayes_pfl.__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_parent, env.get("PYTHONPATH")]))
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="", PYTHONWARNINGS="ignore")
    return env


def _run(config_file: Path) -> str:
    """Run the two-rank training; kill its whole process group (workers included) if it hangs."""
    process = subprocess.Popen(  # noqa: S603 - our own interpreter running our own script
        [sys.executable, str(HELPERS), str(config_file)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=_worker_env(),
        start_new_session=os.name == "posix",
    )
    try:
        output, _ = process.communicate(timeout=RUN_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        if os.name == "posix":
            os.killpg(process.pid, signal.SIGKILL)
        else:
            process.kill()
        output, _ = process.communicate()
        pytest.fail(f"two-rank DDP training did not finish in {RUN_TIMEOUT_S} s; output tail:\n{output[-4000:]}")
    assert process.returncode == 0, f"two-rank DDP training failed (exit {process.returncode}):\n{output[-6000:]}"
    return output


@pytest.fixture(scope="module", params=["spawn", "popen"])
def ddp_run(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, synthetic_root: Path, tiny_kwargs: dict
) -> dict[str, Any]:
    """One two-rank training per launcher; returns the launcher, output folder and both ranks' records."""
    start_method = request.param
    out_dir = tmp_path_factory.mktemp(f"ddp_{start_method}")
    config = {
        "out_dir": str(out_dir),
        "seed": SEED,
        "start_method": start_method,
        "root": str(synthetic_root),
        "model": {key: list(value) if isinstance(value, tuple) else value for key, value in tiny_kwargs.items()}
        | LAUNCHER_OPTIONS[start_method],
    }
    config_file = out_dir / "config.json"
    config_file.write_text(json.dumps(config))
    output = _run(config_file)
    missing = [name for name in ("rank0.pt", "rank1.pt") if not (out_dir / name).is_file()]
    assert not missing, f"ranks wrote no record {missing}; output tail:\n{output[-4000:]}"
    # Our own files, written a moment ago: full unpickling is safe (they hold lists and dicts next to tensors).
    ranks = [torch.load(out_dir / f"rank{rank}.pt", weights_only=False) for rank in (0, 1)]
    return {"start_method": start_method, "out_dir": out_dir, "ranks": ranks}


def _tensors(state: dict[str, Any]) -> dict[str, torch.Tensor]:
    return {key: value for key, value in state.items() if isinstance(value, torch.Tensor)}


def _identical(first: torch.Tensor, second: torch.Tensor) -> bool:
    """Bitwise equal values, NaN matching NaN (anomalib's thresholds start as NaN)."""
    if torch.equal(first, second):
        return True
    return first.is_floating_point() and torch.allclose(first, second, rtol=0.0, atol=0.0, equal_nan=True)


def _differing(first: dict[str, Any], second: dict[str, Any]) -> dict[str, float]:
    """Keys whose tensors differ, with the largest absolute difference."""
    first, second = _tensors(first), _tensors(second)
    assert first.keys() == second.keys()
    return {
        key: float((first[key].double() - second[key].double()).abs().max())
        for key in first
        if not _identical(first[key], second[key])
    }


def _changed(record: dict[str, Any]) -> set[str]:
    return set(_differing(record["initial"], record["final"]))


# -- the two-rank run ------------------------------------------------------------------------------------------


@pytest.mark.integration
@pytest.mark.slow
def test_two_ranks_ran_both_stages(ddp_run: dict[str, Any]) -> None:
    for rank, record in enumerate(ddp_run["ranks"]):
        assert record["rank"] == rank
        assert record["world_size"] == 2
        assert record["strategy"] == "DDPStrategy"
        assert record["backend"] == "gloo"
        assert record["global_step"] == 4
        assert [step["stage"] for step in record["steps"]] == [1, 1, 2, 2]
        assert record["stage"] == 2
        assert record["final"]["_extra_state"]["stage"] == 2
    assert ddp_run["ranks"][0]["pid"] != ddp_run["ranks"][1]["pid"]


@pytest.mark.integration
@pytest.mark.slow
def test_ranks_start_and_end_with_identical_weights(ddp_run: dict[str, Any]) -> None:
    """Bitwise equal: gloo's all-reduce hands every rank the same averaged gradients, Adam does the rest alike."""
    first, second = ddp_run["ranks"]
    assert not _differing(first["initial"], second["initial"])
    assert not _differing(first["final"], second["final"]), "ranks diverged (max abs difference per tensor)"
    assert first["final"]["_extra_state"] == second["final"]["_extra_state"]


@pytest.mark.integration
@pytest.mark.slow
def test_training_changed_the_weights_of_both_stages(ddp_run: dict[str, Any]) -> None:
    for record in ddp_run["ranks"]:
        changed = _changed(record)
        assert not any(key.startswith("backbone.") for key in record["final"]), "the head must exclude CLIP"
        for prefix in STAGE1_PREFIXES + STAGE2_PREFIXES:
            assert any(key.startswith(prefix) for key in changed), f"no weight under {prefix!r} was trained"


@pytest.mark.integration
@pytest.mark.slow
def test_ranks_trained_on_different_images(ddp_run: dict[str, Any]) -> None:
    """Each epoch's images are split between the ranks (DistributedSampler), so equal weights need gradient sync."""
    first, second = (record["steps"] for record in ddp_run["ranks"])
    for epoch in (slice(0, 2), slice(2, 4)):
        seen = [{path for step in steps[epoch] for path in step["images"]} for steps in (first, second)]
        assert seen[0] and seen[1]
        assert not seen[0] & seen[1], f"both ranks trained on {sorted(seen[0] & seen[1])}"
    assert [step["loss"] for step in first] != [step["loss"] for step in second]


@pytest.mark.integration
@pytest.mark.slow
def test_logged_losses_and_metrics_are_reduced_across_ranks(ddp_run: dict[str, Any]) -> None:
    first, second = ddp_run["ranks"]
    assert first["metrics"] == second["metrics"], "ranks report different values of the same metric"
    local = [first["steps"][-1]["loss"], second["steps"][-1]["loss"]]
    assert local[0] != local[1]
    # train_loss is logged with sync_dist=True: the mean of the two ranks' losses of the last step.
    assert first["metrics"]["train_loss"] == pytest.approx(sum(local) / 2, rel=1e-6)
    for name in ("val_image_AUPR", "val_pixel_AUPR", "val_selection"):
        assert name in first["metrics"], f"{name} was not logged under DDP"


@pytest.mark.integration
@pytest.mark.slow
def test_model_checkpoint_is_written_under_ddp(ddp_run: dict[str, Any]) -> None:
    """BayesPFL.configure_callbacks keeps last.ckpt under DDP (rank 0 writes it)."""
    assert (ddp_run["out_dir"] / "weights" / "lightning" / "last.ckpt").is_file()


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.parametrize("ddp_run", ["spawn"], indirect=True)  # only this launcher copies weights back
def test_spawn_returns_trained_weights_to_the_launching_process(ddp_run: dict[str, Any]) -> None:
    main = torch.load(ddp_run["out_dir"] / "main.pt", weights_only=False)
    assert not _differing(main["final"], ddp_run["ranks"][0]["final"])
    assert main["stage"] == 2


# -- pickling, fast ---------------------------------------------------------------------------------------------


@pytest.mark.integration
def test_model_and_datamodule_pickle(tiny_kwargs: dict, synthetic_root: Path) -> None:
    """What ddp_spawn sends to its workers survives pickling: same weights, same stage and class name, same scores."""
    model = BayesPFL(**tiny_kwargs)
    model.model.stage = 2
    model.model.set_class_name("disc")
    clone = pickle.loads(pickle.dumps(model))  # noqa: S301 - our own bytes
    assert not _differing(model.state_dict(), clone.state_dict())
    assert (clone.model.stage, clone.model.class_name) == (2, "disc")
    assert torch.equal(clone.model.class_tokens, model.model.class_tokens)
    images = torch.rand(
        2, 3, tiny_kwargs["image_size"], tiny_kwargs["image_size"], generator=torch.Generator().manual_seed(0)
    )
    with torch.no_grad():
        expected, actual = model.model.eval()(images), clone.model.eval()(images)
    assert torch.equal(expected.pred_score, actual.pred_score)
    assert torch.equal(expected.anomaly_map, actual.anomaly_map)

    datamodule = demo_datamodule(synthetic_root, SEED)
    datamodule.setup("fit")
    copy = pickle.loads(pickle.dumps(datamodule))  # noqa: S301 - our own bytes
    assert copy.train_data.samples.equals(datamodule.train_data.samples)
    assert copy.val_data.samples.equals(datamodule.val_data.samples)

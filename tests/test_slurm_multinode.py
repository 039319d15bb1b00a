"""DDP across two SLURM nodes: `python train.py -m hydra/launcher=slurm trainer=ddp
trainer.num_nodes=2 trainer.devices=2` (CPU, gloo, 4 ranks) on the two-node cluster of
`bash scripts/local_slurm.sh start --nodes 2` (each node its own hostname and network namespace).

One pre-empted two-node job and one uninterrupted one-node × 4 job run side by side (module
fixture) and carry every assertion: `--nodes=2` reaches sbatch; each rank gets its node rank and
the first node as main address; SIGUSR1 reaches the ranks on both nodes, all stop at one step, one
checkpoint, one requeue; the per-step losses of the pre-empted and resumed two-node job are those
of the one-node job to float32 rounding (rel 1e-6: same ranks, same data and random streams per
rank, the same gloo all-reduce over 4 ranks, only the placement differs; most steps agree bit for
bit, one step 1 ulp apart was seen); the final validation on 4 ranks over 2 nodes equals a
single-device evaluation of the same weights (1e-6). A third two-node job, given a 2-minute time
limit and `--signal=USR1@30` through the launcher config, is pre-empted by SLURM's own warning
(no scancel) and must pass the same pre-emption checks.

A one-process run with the same global batch (8 images, no SLURM) runs beside them: the
two-node job logs its per-step losses to rel 1e-5 (tests/test_ddp_losses.py says why that
tolerance: float reduction order, seen ≤ 2e-7 on 2 ranks). What makes them comparable: each
image's augmentation and sampled points come from its own (seed, epoch, index) seed, the logged
loss terms are the mean over ranks, and every job here runs with
`model.criterion.no_object_weight=1.0` (the class loss is a weighted mean per rank, which equals
the big batch's only when every rank's weight sum is the same: docs/fidelity.md).

Skipped unless the partition has two nodes; M2F_REQUIRE_SLURM_MULTINODE=1 (set by `.ci/run` once
its two-node cluster is up) turns the skip into a failure.
"""

import contextlib
import csv
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from datetime import datetime, timedelta
from pathlib import Path

import pytest
import torch

from m2f_lightning.cli.commands import evaluate
from m2f_lightning.data.synthetic import write_dataset
from tests.helpers import TINY_OVERRIDES, compose, synthetic_panoptic
from tests.test_slurm import PARTITION, _finish, _job_ids, _job_printed, _sacct_states

ROOT = Path(__file__).resolve().parents[1]
MAX_STEPS = 12
HEADLINE = ("PQ", "AP", "mIoU")


def _nodes_down_reason() -> str | None:
    """Why the partition cannot run a two-node job, or None."""
    if shutil.which("sinfo") is None:
        return "no SLURM client (sinfo not on PATH)"
    out = subprocess.run(
        ["sinfo", "-h", "-p", PARTITION, "-N", "-o", "%N %T"],
        capture_output=True,
        text=True,
        timeout=10,
    )
    usable = {"idle", "mixed", "allocated", "completing"}
    nodes = {line.split()[0] for line in out.stdout.splitlines() if line.split()[-1] in usable}
    if out.returncode != 0 or len(nodes) < 2:
        answer = (out.stdout + out.stderr).strip()
        return f"no two usable nodes in partition '{PARTITION}' (sinfo -N: {answer!r})"
    return None


DOWN_REASON = _nodes_down_reason()
REQUIRED = os.environ.get("M2F_REQUIRE_SLURM_MULTINODE") == "1"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.slurm,
    pytest.mark.multinode,
    pytest.mark.skipif(DOWN_REASON is not None and not REQUIRED, reason=str(DOWN_REASON)),
]


# what every run here shares, so that the one-process run logs the two-node job's losses
COMPARABLE = (
    "dataset.train_aug={recipe: lsj, size: 128}",  # one image size: no padding differs
    f"dataset.max_steps={MAX_STEPS}",
    "model.criterion.no_object_weight=1.0",
)


def _one_process(run_dir: Path, datasets: Path, global_batch: int = 8) -> subprocess.Popen:
    """The same training in one local process (no SLURM) with the two-node job's global batch."""
    tiny = [o for o in TINY_OVERRIDES if not o.startswith(("logger=", "trainer=", "dataset.batch"))]
    command = [
        sys.executable,
        str(ROOT / "train.py"),
        "task=panoptic",
        "dataset=synthetic",
        "trainer=cpu",
        *tiny,
        f"dataset.batch_size={global_batch}",
        "logger=csv",
        f"paths.datasets_dir={datasets}",
        *COMPARABLE,
        "dataset.val_every_n_steps=0",
        "test_after_training=false",
        "trainer.log_every_n_steps=1",
        f"hydra.run.dir={run_dir}",
    ]
    env = {**os.environ, "WANDB_MODE": "disabled", "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(
        command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def _sweep(
    folder: Path,
    datasets: Path,
    nodes: int,
    devices: int,
    checkpoint_every: int = 10 * MAX_STEPS,
    timeout_min: int = 10,
    launcher: tuple[str, ...] = (),
) -> subprocess.Popen:
    """A one-job sweep of the tiny panoptic model, `nodes` × `devices` CPU ranks; `launcher`:
    more `hydra.launcher.*` overrides."""
    tiny = [o for o in TINY_OVERRIDES if not o.startswith(("logger=", "trainer="))]
    command = [
        sys.executable,
        str(ROOT / "train.py"),
        "-m",
        "hydra/launcher=slurm",
        "task=panoptic",
        "dataset=synthetic",
        "trainer=ddp",
        *tiny,
        "trainer.accelerator=cpu",
        f"trainer.num_nodes={nodes}",
        f"trainer.devices={devices}",
        "logger=csv",
        f"paths.datasets_dir={datasets}",
        *COMPARABLE,
        f"dataset.val_every_n_steps={MAX_STEPS}",
        f"checkpoint.every_n_train_steps={checkpoint_every}",
        "test_after_training=false",
        "trainer.log_every_n_steps=1",
        "progress_every_n_steps=1",
        f"hydra.sweep.dir={folder}",
        f"hydra.launcher.partition={PARTITION}",
        "hydra.launcher.gpus_per_node=null",
        "hydra.launcher.cpus_per_task=1",
        f"hydra.launcher.timeout_min={timeout_min}",
        *launcher,
    ]
    # the jobs import this checkout's package (not another install's) on every node
    env = {**os.environ, "WANDB_MODE": "disabled", "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(
        command,
        cwd=folder.parent,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _signal_when_training(sweep: Path, process: subprocess.Popen) -> str:
    """`scancel --signal=USR1` (the whole job step: every rank on every node) once the job
    trains, far from its end; returns the job id."""
    deadline = time.monotonic() + 420
    while not _job_printed(sweep, f"step 2/{MAX_STEPS}"):
        assert process.poll() is None, process.communicate()[0]
        assert time.monotonic() < deadline, "the two-node job printed no training step in 420 s"
        time.sleep(0.5)
    (job_id,) = _job_ids(sweep)
    subprocess.run(["scancel", "--signal=USR1", job_id], check=True)
    return job_id


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("multinode")
    datasets = root / "datasets"
    write_dataset("demo", datasets, num=8, num_val=5, seed=0)  # 8: one batch of 2 per rank
    start = time.monotonic()
    two = _sweep(root / "two_nodes", datasets, nodes=2, devices=2)
    one = _sweep(root / "one_node", datasets, nodes=1, devices=4)
    alone = _one_process(root / "one_process", datasets)
    try:
        job_id = _signal_when_training(root / "two_nodes", two)
        _finish(two, timeout=600)
        _finish(one, timeout=300)
        _finish(alone, timeout=300)
    finally:  # a failure leaves no sweep nor job behind
        if alone.poll() is None:
            alone.kill()
        for folder, process in ((root / "one_node", one), (root / "two_nodes", two)):
            if process.poll() is None:
                process.kill()
                if (folder / ".submitit").is_dir():
                    subprocess.run(["scancel", *_job_ids(folder)], check=False)
    print(f"two sweeps (one pre-empted) took {time.monotonic() - start:.0f} s")
    return {"root": root, "datasets": datasets, "job_id": job_id}


def _task_logs(sweep: Path, job_id: str) -> dict[int, str]:
    """Each SLURM task's (rank's) stdout, by task id: submitit writes one file per task."""
    logs = {}
    for path in (sweep / ".submitit" / job_id).glob(f"{job_id}_*_log.out"):
        logs[int(path.name.split("_")[-2])] = path.read_text()
    return logs


def _losses(run: Path) -> dict[int, str]:
    """train/loss by logged step over every csv version, as written (bit for bit)."""
    losses: dict[int, str] = {}
    for path in sorted((run / "csv").glob("version_*/metrics.csv")):
        with path.open() as f:
            for row in csv.DictReader(f):
                if row.get("train/loss"):
                    assert int(row["step"]) not in losses, f"step {row['step']} logged twice"
                    losses[int(row["step"])] = row["train/loss"]
    return losses


def test_nodes_reach_sbatch_and_each_rank_gets_its_node(runs: dict) -> None:
    sweep, job_id = runs["root"] / "two_nodes", runs["job_id"]
    script = (sweep / ".submitit" / job_id / f"{job_id}_submission.sh").read_text()
    assert "#SBATCH --nodes=2" in script and "#SBATCH --ntasks-per-node=2" in script
    # the launcher's time-limit warning (conf/hydra/launcher/slurm.yaml), not submitit's USR2
    assert "#SBATCH --signal=USR1@120" in script
    out = subprocess.run(
        ["sacct", "-X", "-n", "-P", "-j", job_id, "-o", "NNodes,NodeList"],
        capture_output=True,
        text=True,
    )
    assert out.stdout.split()[-1] == "2|m2f-node[1-2]", out.stdout
    logs = _task_logs(sweep, job_id)
    assert sorted(logs) == [0, 1, 2, 3]
    for task, text in logs.items():
        node = task // 2  # SLURM's block distribution: tasks 0, 1 on the first node
        placement = re.findall(r"rank (\d)/4: node (\d)/2 \((\S+)\), .*main address (\S+):", text)
        # every start of the job (the first run and the requeued one) on the same node
        assert placement, f"task {task} printed no placement:\n{text}"
        assert set(placement) == {(str(task), str(node), f"m2f-node{node + 1}", "m2f-node1")}


def test_preemption_reaches_both_nodes_and_resumes_exactly(runs: dict) -> None:
    _check_preempted_once_and_resumed(runs["root"] / "two_nodes", runs["job_id"], runs)


def _check_preempted_once_and_resumed(sweep: Path, job_id: str, runs: dict) -> None:
    """Every rank on both nodes got SIGUSR1 itself and stopped at one step; one checkpoint, one
    requeue; the losses of both runs of the job are the uninterrupted one-node job's."""
    logs = _task_logs(sweep, job_id)
    stops = {}
    for task, text in logs.items():
        found = re.findall(r"rank (\d) on (\S+): stopping at step (\d+) \((.*)\)", text)
        assert len(found) == 1, f"task {task}: {found}\n{text}"
        rank, host, step, heard = found[0]
        assert (rank, host, heard) == (str(task), f"m2f-node{task // 2 + 1}", "got SIGUSR1")
        stops[task] = int(step)
    assert len(set(stops.values())) == 1, f"ranks stopped at different steps: {stops}"
    (saved_at,) = set(stops.values())
    assert 0 < saved_at < MAX_STEPS
    run = sweep / "0"
    assert logs[0].count("pre-empted (SIGUSR1 during training): saved") == 1
    assert logs[0].count(f"requeued SLURM job {job_id}") == 1
    assert f"resuming from {run / 'preempted.ckpt'}" in logs[0]
    assert _sacct_states(job_id, expected_rows=1) == ["COMPLETED"]
    restarts = subprocess.run(
        ["sacct", "-X", "-n", "-P", "-D", "-j", job_id, "-o", "State"],
        capture_output=True,
        text=True,
    ).stdout.split()
    assert restarts == ["REQUEUED", "COMPLETED"]
    assert json.loads((run / "metrics.json").read_text())["global_step"] == MAX_STEPS
    two = _losses(run)
    one = _losses(runs["root"] / "one_node" / "0")
    assert sorted(one) == sorted(two) == list(range(MAX_STEPS))
    # same ranks, data and random streams: equal up to float32 rounding (most steps bit for bit;
    # one step 1 ulp apart was seen); the losses move by >1% from step to step
    assert {s: float(v) for s, v in two.items()} == pytest.approx(
        {s: float(v) for s, v in one.items()}, rel=1e-6, abs=0
    )


def test_two_nodes_log_the_losses_of_one_process_with_the_same_global_batch(runs: dict) -> None:
    """4 ranks × 2 images on 2 nodes (pre-empted and resumed) against 1 process × 8 images:
    the same samples per step, each with its own augmentation and point seeds; rel 1e-5 (float
    reduction order: gloo sums the ranks' gradients, one process its images' in its backward)."""
    two = {s: float(v) for s, v in _losses(runs["root"] / "two_nodes" / "0").items()}
    alone = {s: float(v) for s, v in _losses(runs["root"] / "one_process").items()}
    assert sorted(alone) == sorted(two) == list(range(MAX_STEPS))
    assert len(set(alone.values())) == MAX_STEPS  # the losses move from step to step
    assert two == pytest.approx(alone, rel=1e-5, abs=0)


def test_validation_on_two_nodes_equals_one_device(runs: dict, tmp_path: Path) -> None:
    run = runs["root"] / "two_nodes" / "0"
    on_two_nodes = json.loads((run / "metrics.json").read_text())["val"]
    overrides = synthetic_panoptic(
        runs["datasets"], f"checkpoint={run / 'checkpoints' / 'last.ckpt'}"
    )
    one = evaluate(compose("evaluate", overrides, tmp_path), tmp_path)
    assert one["mIoU"] > 0, one
    assert {k: on_two_nodes[f"val/{k}"] for k in HEADLINE} == pytest.approx(
        {k: one[k] for k in HEADLINE}, abs=1e-6, rel=0
    )


TIME_LIMIT_MIN, SIGNAL_LEAD = 2, 30  # sbatch --time=2 --signal=USR1@30: the warning 60-90 s in


def _rank_processes(job_id: str) -> dict[int, int]:
    """The job's training ranks now running, {SLURM_PROCID: pid}, read from /proc (the nodes'
    namespaces share this machine's process table): the Python processes of submitit's task
    command (not `srun`, whose command line holds the same words) with this job's id."""
    ranks: dict[int, list[int]] = {}
    for proc in Path("/proc").iterdir():
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
            if b"submitit.core._submit" not in argv or not argv[0].split(b"/")[-1].startswith(
                b"python"
            ):
                continue
            env = dict(
                item.split("=", 1)
                for item in (proc / "environ").read_bytes().decode(errors="replace").split("\0")
                if "=" in item
            )
        except (OSError, ValueError):
            continue  # gone, or not ours to read
        if env.get("SLURM_JOB_ID") == job_id and "SLURM_PROCID" in env and _alive(proc):
            ranks.setdefault(int(env["SLURM_PROCID"]), []).append(int(proc.name))
    # a rank's own children (if any) share its command line and environment: keep the eldest
    return {rank: min(pids, key=_start_time) for rank, pids in ranks.items()}


def _alive(proc: Path) -> bool:
    """Not a zombie (an exited process not yet reaped still lists its command line)."""
    try:
        return (proc / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _start_time(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])


def _pending(pid: int, signum: int) -> bool:
    """Whether `signum` waits, undelivered, for the (stopped) process `pid`."""
    status = Path(f"/proc/{pid}/status").read_text()
    masks = re.findall(r"^(?:SigPnd|ShdPnd):\s*([0-9a-f]+)$", status, re.M)
    return any(int(mask, 16) >> (signum - 1) & 1 for mask in masks)


def _hold_until_slurm_signals(sweep: Path, process: subprocess.Popen) -> tuple[str, set[int]]:
    """Once the job trains, stop its four ranks (SIGSTOP) until SLURM's time-limit warning is
    pending in them, then let them go (SIGCONT): the 12 tiny steps take ~3 s, slurmctld sends the
    warning at one of its checks, every 30 s, so without the pause the run would mostly be over
    by then. A warning that came while the ranks still started (held by `early_signal`) was acted
    on at the first step: nothing is pending then. Returns the job id and the ranks the warning
    was seen pending in."""
    deadline = time.monotonic() + 420
    while not _job_printed(sweep, f"step 1/{MAX_STEPS}"):
        assert process.poll() is None, process.communicate()[0]
        assert time.monotonic() < deadline, "the two-node job printed no training step in 420 s"
        time.sleep(0.1)
    (job_id,) = _job_ids(sweep)
    if _job_printed(sweep, "stopping at step"):
        return job_id, set()  # warned while starting: the ranks stop at the first step
    ranks = _rank_processes(job_id)
    assert sorted(ranks) == [0, 1, 2, 3], ranks
    for pid in ranks.values():
        os.kill(pid, signal.SIGSTOP)
    pending: set[int] = set()
    try:
        # the latest the warning comes: SIGNAL_LEAD s before the job's end (2 s for the RPCs)
        end = subprocess.run(
            ["squeue", "-h", "-j", job_id, "-o", "%e"], capture_output=True, text=True
        ).stdout.strip()
        latest = datetime.fromisoformat(end) - timedelta(seconds=SIGNAL_LEAD - 2)
        while not pending and not _job_printed(sweep, "stopping at step"):
            pending = {r for r, pid in ranks.items() if _pending(pid, signal.SIGUSR1)}
            if datetime.now() > latest:
                break
            time.sleep(0.2)
        time.sleep(1)  # one RPC per node: let the other node's signal land too
        pending = {r for r, pid in ranks.items() if _pending(pid, signal.SIGUSR1)}
    finally:
        for pid in ranks.values():
            with contextlib.suppress(ProcessLookupError):  # gone: the checks below say what ran
                os.kill(pid, signal.SIGCONT)
    return job_id, pending


def test_the_time_limit_signal_reaches_both_nodes_and_the_job_resumes_exactly(
    runs: dict,
) -> None:
    """SLURM's own time-limit warning, not scancel: the launcher config gives the two-node job
    `timeout_min=2` and `additional_parameters.signal=USR1@30` (sbatch `--time=2
    --signal=USR1@30`), and slurmctld sends SIGUSR1 to every task on both nodes 60-90 s after the
    start (at its first check, every 30 s, at most 30 s before the job's end; the ranks train
    from ~25 s on, and are paused until the warning, see `_hold_until_slurm_signals`). The ranks stop at one step, save once, rank 0 requeues the job;
    the test then raises the requeued job's limit to 10 minutes (`scontrol update`, as an admin
    would), so the resumed run finishes instead of being warned again a minute later, and its
    losses must be the uninterrupted one-node job's."""
    sweep = runs["root"] / "time_limit"
    sweep.mkdir()
    process = _sweep(
        sweep,
        runs["datasets"],
        nodes=2,
        devices=2,
        timeout_min=TIME_LIMIT_MIN,
        launcher=(f"hydra.launcher.additional_parameters.signal=USR1@{SIGNAL_LEAD}",),
    )
    job_id = None
    try:
        job_id, pending = _hold_until_slurm_signals(sweep, process)
        requeued = f"requeued SLURM job {job_id}"
        deadline = time.monotonic() + 120
        while not _job_printed(sweep, requeued) and process.poll() is None:
            assert time.monotonic() < deadline, f"job {job_id} not requeued in 120 s"
            time.sleep(0.5)
        stops = [
            re.findall(r"rank \d on \S+: stopping at step.*", text)
            for text in _task_logs(sweep, job_id).values()
        ]
        assert _job_printed(sweep, requeued), (
            f"no time-limit pre-emption: SIGUSR1 pending in ranks {sorted(pending)} of the "
            f"stopped job, the ranks printed {stops}"
        )
        subprocess.run(["scontrol", "update", f"JobId={job_id}", "TimeLimit=10"], check=True)
        _finish(process, timeout=300)
    finally:
        if process.poll() is None:
            process.kill()
            if job_id is not None:
                subprocess.run(["scancel", job_id], check=False)
    script = (sweep / ".submitit" / job_id / f"{job_id}_submission.sh").read_text()
    assert f"#SBATCH --signal=USR1@{SIGNAL_LEAD}" in script
    assert f"#SBATCH --time={TIME_LIMIT_MIN}" in script
    _check_preempted_once_and_resumed(sweep, job_id, runs)
    limit = subprocess.run(
        ["sacct", "-X", "-n", "-P", "-j", job_id, "-o", "Timelimit"], capture_output=True, text=True
    ).stdout.split()
    assert limit == ["00:10:00"], limit  # the resumed run finished under the raised limit


def _lose_node(node: str) -> None:
    """What a node failure is to SLURM: its slurmd, job steps and tasks (every process in the
    node's network namespace) killed at once."""
    pids = subprocess.run(["ip", "netns", "pids", node], capture_output=True, text=True).stdout
    assert pids.split(), f"no process in {node}'s namespace"
    subprocess.run(["kill", "-9", *pids.split()], check=False)


def _bring_back() -> None:
    """Start the lost slurmd again (`local_slurm.sh start` starts what is missing and resumes
    a down node), with the CPUs per node the running cluster was started with."""
    conf = Path("/etc/slurm/slurm.conf").read_text()
    cpus = re.search(r"^NodeName=m2f-node1 .*CPUs=(\d+)", conf, re.M)
    env = {**os.environ, "LOCAL_SLURM_CPUS": cpus.group(1) if cpus else str(os.cpu_count())}
    script = ROOT / "scripts" / "local_slurm.sh"
    subprocess.run(["bash", str(script), "start", "--nodes", "2"], env=env, check=True)


def _first_run_state(job_id: str, timeout: float = 180) -> str:
    """The state sacct gives the job's first run once it ended (`-D`: a requeued job's earlier
    runs too)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        out = subprocess.run(
            ["sacct", "-X", "-n", "-P", "-D", "-j", job_id, "-o", "State"],
            capture_output=True,
            text=True,
        )
        states = out.stdout.split()
        if states and states[0] in ("NODE_FAIL", "FAILED"):
            return states[0]
        time.sleep(1)
    raise AssertionError(f"job {job_id} still not ended {timeout} s after its node was lost")


def test_a_lost_node_fails_the_job_and_a_resubmit_resumes_from_the_last_checkpoint(
    runs: dict,
) -> None:
    """m2f-node2's slurmd and tasks killed mid-run: sacct ends the job NODE_FAIL (or FAILED, when
    the ranks on m2f-node1 fail first); the same sweep submitted again (resume=auto) continues
    from the last periodic checkpoint, losing only the steps since it, and its losses are the
    uninterrupted one-node job's. Runs after the other tests: it takes a node away."""
    sweep = runs["root"] / "lost_node"
    sweep.mkdir()
    every = 3
    first = _sweep(sweep, runs["datasets"], nodes=2, devices=2, checkpoint_every=every)
    try:
        deadline = time.monotonic() + 420
        while not _job_printed(sweep, f"step {2 * every}/{MAX_STEPS}"):
            assert first.poll() is None, first.communicate()[0]
            assert time.monotonic() < deadline, "the two-node job printed no step in 420 s"
            time.sleep(0.5)
        (job_id,) = _job_ids(sweep)
        _lose_node("m2f-node2")
        state = _first_run_state(job_id)
        # SLURM requeues a NODE_FAIL job (JobRequeue=1), which then waits for the lost node
        subprocess.run(["scancel", job_id], check=False)
    finally:
        if first.poll() is None:
            first.kill()
        _bring_back()
    assert state in ("NODE_FAIL", "FAILED"), state
    run = sweep / "0"
    done = max(map(int, re.findall(rf"step (\d+)/{MAX_STEPS} ", _task_logs(sweep, job_id)[0])))
    # the newest checkpoint written before the loss (what resume=auto takes): rank 0 lives on
    # the node that stays, so a periodic checkpoint can be complete while last.ckpt still
    # holds the one before (seen once: step0000006.ckpt written, last.ckpt at step 3)
    saved = max(_global_step(path) for path in (run / "checkpoints").glob("*.ckpt"))
    assert saved % every == 0 and every <= saved <= done, (saved, done)
    assert done - saved <= every, f"step {done} reached, but the last checkpoint is at {saved}"
    second = _sweep(sweep, runs["datasets"], nodes=2, devices=2, checkpoint_every=every)
    output = _finish(second, timeout=420)
    (_, resubmitted) = _job_ids(sweep)
    assert f"resuming from {run / 'checkpoints'}" in _task_logs(sweep, resubmitted)[0], output
    assert json.loads((run / "metrics.json").read_text())["global_step"] == MAX_STEPS
    _, resumed = _losses_by_start(run)
    assert sorted(resumed) == list(range(saved, MAX_STEPS)), "not resumed at the checkpoint"
    one = _losses(runs["root"] / "one_node" / "0")
    assert {s: float(v) for s, v in resumed.items()} == pytest.approx(
        {s: float(one[s]) for s in resumed}, rel=1e-6, abs=0
    )


def _global_step(checkpoint: Path) -> int:
    """A checkpoint's step; -1 for one cut off mid-write (resume=auto passes those by)."""
    try:
        return torch.load(checkpoint, map_location="cpu", weights_only=False)["global_step"]
    except Exception:
        return -1


def _losses_by_start(run: Path) -> list[dict[int, float]]:
    """train/loss by logged step, one dict per start of the run (csv version)."""
    starts = []
    for path in sorted((run / "csv").glob("version_*/metrics.csv")):
        with path.open() as f:
            rows = [r for r in csv.DictReader(f) if r.get("train/loss")]
        starts.append({int(r["step"]): float(r["train/loss"]) for r in rows})
    return starts

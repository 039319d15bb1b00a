"""scripts/local_slurm.sh without root or a cluster: its package step runs against stub
apt-get/dpkg-query on PATH and a policy-rc.d under tmp_path, and a failing step names itself.

The script defines its functions and stops when sourced, so a test can call one step directly.
"""

import os
import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "local_slurm.sh"
PACKAGES = ["slurmctld", "slurmd", "slurm-client", "munge", "slurmdbd", "mariadb-server"]
DOCKER_POLICY = "#!/bin/sh\n# Docker's: services must not start during apt-get install\nexit 101\n"

STUBS = {
    # dpkg-query -W -f=... PKG: "installed" for the packages in $STUB_INSTALLED, else not found
    "dpkg-query": """#!/bin/sh
for last; do :; done
case " $STUB_INSTALLED " in *" $last "*) printf installed; exit 0 ;; esac
echo "dpkg-query: no packages found matching $last" >&2
exit 1
""",
    # dpkg -s PKG, the same answer (the script's older check)
    "dpkg": """#!/bin/sh
for last; do :; done
case " $STUB_INSTALLED " in *" $last "*) exit 0 ;; esac
exit 1
""",
    # apt-get: records its arguments and whether policy-rc.d blocked daemons at that moment;
    # fails the subcommand named in $STUB_APT_FAIL
    "apt-get": """#!/bin/sh
if [ -x "$LOCAL_SLURM_POLICY_RC" ]; then policy=present; else policy=absent; fi
echo "apt-get $* policy=$policy" >>"$STUB_LOG"
for a; do
  if [ "$a" = "$STUB_APT_FAIL" ]; then echo "E: stub apt-get $a failed" >&2; exit 100; fi
done
exit 0
""",
}


@pytest.fixture
def sandbox(tmp_path: Path) -> dict[str, str]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in STUBS.items():
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    return {
        **os.environ,
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        "LOCAL_SLURM_POLICY_RC": str(tmp_path / "policy-rc.d"),
        "LOCAL_SLURM_DIR": str(tmp_path / "state"),
        "LOCAL_SLURM_ACCOUNTING": "1",
        "STUB_LOG": str(tmp_path / "apt.log"),
        "STUB_INSTALLED": "",
        "STUB_APT_FAIL": "",
    }


def run_steps(env: dict[str, str], commands: str) -> subprocess.CompletedProcess:
    """A driver script that sources local_slurm.sh (its `set -Eeuo pipefail` and traps included),
    then runs `commands`, one per line."""
    driver = Path(env["STUB_LOG"]).parent / "driver.sh"
    driver.write_text(f'source "{SCRIPT}"\n{commands}\n')
    return subprocess.run(
        ["bash", str(driver)], env=env, capture_output=True, text=True, timeout=60
    )


def apt_calls(env: dict[str, str]) -> list[str]:
    log = Path(env["STUB_LOG"])
    return log.read_text().splitlines() if log.exists() else []


def test_install_on_docker_debian_with_policy_rc_present(sandbox: dict[str, str]) -> None:
    """Docker's Debian images ship /usr/sbin/policy-rc.d: the install succeeds and leaves it be."""
    policy = Path(sandbox["LOCAL_SLURM_POLICY_RC"])
    policy.write_text(DOCKER_POLICY)
    policy.chmod(0o755)
    result = run_steps(sandbox, "install_packages")
    assert result.returncode == 0, result.stdout + result.stderr
    update, install = apt_calls(sandbox)
    assert update.startswith("apt-get") and "update" in update.split()
    assert "install" in install.split() and install.endswith("policy=present")
    assert all(p in install.split() for p in PACKAGES)
    assert policy.read_text() == DOCKER_POLICY


def test_install_without_policy_rc_blocks_daemons_only_while_apt_runs(
    sandbox: dict[str, str],
) -> None:
    result = run_steps(sandbox, "install_packages")
    assert result.returncode == 0, result.stdout + result.stderr
    assert [c.rsplit(" ", 1)[1] for c in apt_calls(sandbox)] == ["policy=present"] * 2
    assert not Path(sandbox["LOCAL_SLURM_POLICY_RC"]).exists()


def test_install_is_skipped_when_every_package_is_installed(sandbox: dict[str, str]) -> None:
    sandbox["STUB_INSTALLED"] = " ".join(PACKAGES)
    result = run_steps(sandbox, "install_packages")
    assert result.returncode == 0, result.stdout + result.stderr
    assert apt_calls(sandbox) == []


def test_only_the_missing_packages_are_installed(sandbox: dict[str, str]) -> None:
    sandbox["STUB_INSTALLED"] = "munge slurm-client"
    sandbox["LOCAL_SLURM_ACCOUNTING"] = "0"
    result = run_steps(sandbox, "install_packages")
    assert result.returncode == 0, result.stdout + result.stderr
    install = apt_calls(sandbox)[-1].split()
    assert [p for p in PACKAGES if p in install] == ["slurmctld", "slurmd"]


def test_a_failing_apt_step_says_which_step_failed(sandbox: dict[str, str]) -> None:
    sandbox["STUB_APT_FAIL"] = "install"
    result = run_steps(sandbox, "install_packages")
    assert result.returncode != 0
    assert "FAILED" in result.stderr and "apt-get install" in result.stderr, result.stderr
    assert "E: stub apt-get install failed" in result.stderr
    # the policy-rc.d the script made for apt is gone even though apt failed
    assert not Path(sandbox["LOCAL_SLURM_POLICY_RC"]).exists()


def test_any_failing_step_is_named_with_its_command(sandbox: dict[str, str]) -> None:
    result = run_steps(
        sandbox, 'step "wait for the widget"\nwait_for 1 widget false\necho unreachable'
    )
    assert result.returncode != 0
    assert "unreachable" not in result.stdout
    assert "timed out after 1s waiting for widget" in result.stderr
    assert 'FAILED in step "wait for the widget"' in result.stderr, result.stderr
    assert "wait_for 1 widget false" in result.stderr


def _conf(sandbox: dict[str, str], nodes: int) -> str:
    conf = Path(sandbox["STUB_LOG"]).parent / "slurm.conf"
    result = run_steps(sandbox, f'CONF="{conf}"\nNODES={nodes}\nCPUS=4\nwrite_slurm_conf')
    assert result.returncode == 0, result.stdout + result.stderr
    return conf.read_text()


def test_one_node_conf_is_localhost(sandbox: dict[str, str]) -> None:
    conf = _conf(sandbox, 1)
    assert "SlurmctldHost=localhost\n" in conf
    assert [line for line in conf.splitlines() if line.startswith(("NodeName", "Partition"))] == [
        f"NodeName=localhost NodeAddr=127.0.0.1 CPUs=4 RealMemory={_memory(conf)} State=UNKNOWN",
        "PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP",
    ]


def test_two_node_conf_puts_each_node_at_its_namespace_address(sandbox: dict[str, str]) -> None:
    """The nodes reach the controller at the bridge's address, slurmctld each node at its own."""
    conf = _conf(sandbox, 2)
    assert "SlurmctldHost=localhost(10.77.0.1)\n" in conf
    memory = _memory(conf)
    assert [line for line in conf.splitlines() if line.startswith(("NodeName", "Partition"))] == [
        f"NodeName=m2f-node1 NodeAddr=10.77.0.11 CPUs=4 RealMemory={memory} State=UNKNOWN",
        f"NodeName=m2f-node2 NodeAddr=10.77.0.12 CPUs=4 RealMemory={memory} State=UNKNOWN",
        "PartitionName=debug Nodes=m2f-node1,m2f-node2 Default=YES MaxTime=INFINITE State=UP",
    ]
    # one pid and log file per slurmd
    assert "SlurmdPidFile=" in conf and conf.count("slurmd-%n.") == 2
    # a lost node is declared down (its job ends NODE_FAIL) in seconds, not SLURM's 300 s
    assert "\nSlurmdTimeout=20\n" in conf


def _memory(conf: str) -> str:
    return conf.split("RealMemory=")[1].split()[0]


@pytest.mark.parametrize("count", ["0", "x", "10", ""])
def test_a_bad_node_count_is_refused(sandbox: dict[str, str], count: str) -> None:
    result = subprocess.run(
        ["bash", str(SCRIPT), "start", "--nodes", count],
        env=sandbox,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert f"--nodes takes a count from 1 to 9, got '{count}'" in result.stderr


def test_a_running_cluster_of_another_size_must_be_stopped_first(sandbox: dict[str, str]) -> None:
    state = Path(sandbox["LOCAL_SLURM_DIR"])
    state.mkdir()
    (state / "nodes").write_text("1\n")
    pgrep = Path(sandbox["STUB_LOG"]).parent / "bin" / "pgrep"
    pgrep.write_text("#!/bin/sh\nexit 0\n")  # "slurmctld is running"
    pgrep.chmod(0o755)
    result = run_steps(sandbox, "NODES=2\ncheck_node_count")
    assert result.returncode != 0
    assert "a cluster of 1 node(s) is running" in result.stderr, result.stderr
    assert run_steps(sandbox, "NODES=1\ncheck_node_count").returncode == 0

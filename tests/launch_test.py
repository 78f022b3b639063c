"""Launchers: the Colab notebook runs headless; the shell scripts parse and
print the right commands; the local launcher stops its processes on failure.
"""

import json
import os
import shlex
import signal
import subprocess
import sys
import time

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAUNCH = os.path.join(REPO, "launch")
sys.path.insert(0, LAUNCH)

import local_multiprocess  # pylint: disable=g-import-not-at-top


# --- The notebook -----------------------------------------------------------


def _cache_dir(tmp_path_factory):
  """The compilation cache that tests/multiprocess_test.py also uses."""
  base = tmp_path_factory.getbasetemp()
  path = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
  return str(path / "jax-cache")


def test_notebook_runs_headless(tmp_path, tmp_path_factory, monkeypatch):
  nbformat = pytest.importorskip("nbformat")
  nbclient = pytest.importorskip("nbclient")
  nb = nbformat.read(os.path.join(LAUNCH, "colab_tpu.ipynb"), as_version=4)
  params = [i for i, c in enumerate(nb.cells)
            if "parameters" in c.metadata.get("tags", ())]
  assert len(params) == 1, "one cell must be tagged 'parameters'"
  workdir = tmp_path / "run"
  # As papermill does: a cell after the defaults overrides them.
  nb.cells.insert(params[0] + 1, nbformat.v4.new_code_cell(
      f"WORKDIR = {str(workdir)!r}\nTINY = True\nINSTALL = False\n"
      "OVERRIDES = {'batch_size': 512, 'num_devices': 1}"))
  # The kernel inherits this environment: 8 fake CPU devices (conftest).
  monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", _cache_dir(tmp_path_factory))
  monkeypatch.setenv("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")
  client = nbclient.NotebookClient(
      nb, timeout=600, kernel_name="python3",
      resources={"metadata": {"path": LAUNCH}})
  client.execute()
  results = json.loads((workdir / "results.json").read_text())
  assert results["steps"] == 2  # 1258 training images // 512, one epoch.
  assert len(results["test"]["acc"]) == 3
  expected = ["exit_accuracy.png", "training.png"]
  try:
    import mexd.early_exit  # pylint: disable=g-import-not-at-top,unused-import
    expected.append("accuracy_cost.png")
  except ImportError:
    pass
  for name in expected:
    png = workdir / "plots" / name
    assert png.exists(), name
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
  # The plots are shown in the notebook too.
  shown = sum("image/png" in out.get("data", {})
              for c in nb.cells if c.cell_type == "code"
              for out in c.get("outputs", ()))
  assert shown == len(expected)


# --- launch/local_multiprocess.py --------------------------------------------


def _fake_python(tmp_path, body):
  """An executable that stands in for `python -m mexd.train`."""
  path = tmp_path / "fake_python"
  path.write_text("#!/bin/bash\n" + body)
  path.chmod(0o755)
  return str(path)


def _alive(pid):
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  return True


def test_local_launcher_sets_up_each_process(tmp_path):
  out = tmp_path / "env"
  python = _fake_python(tmp_path, (
      f'echo "$JAX_PROCESS_ID $JAX_NUM_PROCESSES $JAX_COORDINATOR_ADDRESS '
      f'$JAX_PLATFORMS $XLA_FLAGS | $*" > {out}.$JAX_PROCESS_ID\n'))
  code = local_multiprocess.launch(["--workdir=w", "--config.seed=1"],
                                   num_processes=3, cpu_devices=4,
                                   python=python, port=12345)
  assert code == 0
  for i in range(3):
    line = (tmp_path / f"env.{i}").read_text().split()
    assert line[:4] == [str(i), "3", "127.0.0.1:12345", "cpu"], line
    # The test session's 8-device flag is replaced, not added to.
    assert [f for f in line if "device_count" in f] == [
        "--xla_force_host_platform_device_count=4"], line
    assert line[line.index("|") + 1:] == [
        "-m", "mexd.train", "--multiprocess", "--workdir=w",
        "--config.seed=1"]


def test_local_launcher_stops_the_others_when_one_fails(tmp_path):
  pids = tmp_path / "pids"
  python = _fake_python(tmp_path, (
      f"echo $$ >> {pids}\n"
      "[[ $JAX_PROCESS_ID != 1 ]] && exec sleep 300\n"
      # Process 1 fails once all three are running.
      f"while (( $(wc -l < {pids}) < 3 )); do sleep 0.05; done\n"
      "exit 3\n"))
  t0 = time.time()
  code = local_multiprocess.launch([], num_processes=3, python=python)
  assert code == 3
  assert time.time() - t0 < 60
  started = [int(p) for p in pids.read_text().split()]
  assert len(started) == 3
  assert not any(_alive(p) for p in started), "stray processes"


def test_local_launcher_processes_die_with_it(tmp_path):
  pids = tmp_path / "pids"
  python = _fake_python(tmp_path, f"echo $$ >> {pids}\nexec sleep 300\n")
  launcher = subprocess.Popen([sys.executable, "-c", (
      "import sys; sys.path.insert(0, sys.argv[1]); "
      "import local_multiprocess as l; "
      "l.launch([], num_processes=2, python=sys.argv[2])"), LAUNCH, python])
  try:
    deadline = time.time() + 60
    while (not pids.exists() or len(pids.read_text().split()) < 2):
      assert time.time() < deadline and launcher.poll() is None
      time.sleep(0.1)
  finally:
    launcher.kill()  # SIGKILL: the launcher cannot clean up itself.
    launcher.wait()
  started = [int(p) for p in pids.read_text().split()]
  deadline = time.time() + 10
  while any(_alive(p) for p in started) and time.time() < deadline:
    time.sleep(0.1)
  assert not any(_alive(p) for p in started), "stray processes"


def test_local_launcher_timeout(tmp_path):
  python = _fake_python(tmp_path, "exec sleep 300\n")
  code = local_multiprocess.launch([], num_processes=2, python=python,
                                   timeout=1)
  assert code == 124


def test_local_launcher_cli_splits_flags_at_double_dash(monkeypatch):
  seen = {}
  monkeypatch.setattr(local_multiprocess, "launch",
                      lambda args, **kw: seen.update(args=args, **kw) or 0)
  monkeypatch.setattr(signal, "signal", lambda *a: None)
  assert local_multiprocess.main(
      ["--num_processes=4", "--cpu_devices=2", "--",
       "--config=configs/digits.py", "--num_processes=9"]) == 0
  assert seen["num_processes"] == 4 and seen["cpu_devices"] == 2
  assert seen["args"] == ["--config=configs/digits.py", "--num_processes=9"]


# --- The SLURM path -----------------------------------------------------------


def test_jax_detects_slurm(tmp_path):
  """jax.distributed.initialize() with no arguments joins SLURM tasks."""
  port = local_multiprocess.free_port()
  code = ("import jax; jax.distributed.initialize(); "
          "print(jax.process_index(), jax.process_count(), "
          "jax.device_count())")
  procs = []
  for i in range(2):
    env = dict(os.environ, SLURM_JOB_ID="4242", SLURM_STEP_NODELIST="localhost",
               SLURM_NTASKS="2", SLURM_PROCID=str(i), SLURM_LOCALID=str(i),
               JAX_COORDINATOR_PORT=str(port), JAX_PLATFORMS="cpu",
               XLA_FLAGS="--xla_force_host_platform_device_count=2")
    procs.append(subprocess.Popen([sys.executable, "-c", code], env=env,
                                  stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True))
  try:
    outs = [p.communicate(timeout=120) for p in procs]
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
        p.wait()
  for i, (p, (out, err)) in enumerate(zip(procs, outs)):
    assert p.returncode == 0, err[-2000:]
    assert out.split() == [str(i), "2", "4"], out


def _task_env(tmp_path, **env):
  """Runs the sbatch script's per-task branch with a fake `python`."""
  bindir = tmp_path / "bin"
  bindir.mkdir(exist_ok=True)
  fake = bindir / "python"
  fake.write_text('#!/bin/bash\necho "ids=${JAX_LOCAL_DEVICE_IDS:-unset} '
                  'cwd=$PWD args=$*"\n')
  fake.chmod(0o755)
  full = {k: v for k, v in os.environ.items()
          if not k.startswith(("SLURM_", "CUDA_VISIBLE", "JAX_LOCAL"))}
  full.update(PATH=f"{bindir}:{os.environ['PATH']}", MEXD_REPO=REPO, **env)
  out = subprocess.run(
      ["bash", os.path.join(LAUNCH, "slurm_gpu.sbatch"), "--task",
       "--config=configs/digits.py", "--workdir=/shared/run"],
      env=full, capture_output=True, text=True, timeout=60, check=True)
  return out.stdout.strip()


@pytest.mark.parametrize("env,ids", [
    # One task per GPU, all GPUs visible: jax takes GPU SLURM_LOCALID.
    (dict(CUDA_VISIBLE_DEVICES="0,1,2,3", SLURM_STEP_TASKS_PER_NODE="4(x2)",
          SLURM_LOCALID="2"), "unset"),
    # SLURM bound one GPU to the task: it is device 0 of the process.
    (dict(CUDA_VISIBLE_DEVICES="3", SLURM_STEP_TASKS_PER_NODE="4(x2)",
          SLURM_LOCALID="3"), "0"),
    # One task per node: the process drives all of the node's GPUs.
    (dict(CUDA_VISIBLE_DEVICES="0,1,2,3", SLURM_STEP_TASKS_PER_NODE="1(x2)",
          SLURM_LOCALID="0"), "0,1,2,3"),
])
def test_slurm_task_picks_its_gpus(tmp_path, env, ids):
  out = _task_env(tmp_path, **env)
  assert out == (f"ids={ids} cwd={REPO} args=-m mexd.train --multiprocess "
                 "--config=configs/digits.py --workdir=/shared/run"), out


def test_slurm_dry_run_and_outside_slurm(tmp_path):
  script = os.path.join(LAUNCH, "slurm_gpu.sbatch")
  env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
  out = subprocess.run(["bash", script, "--workdir=/shared/run"],
                       env=dict(env, MEXD_REPO=REPO, MEXD_DRY_RUN="1"),
                       capture_output=True, text=True, timeout=60)
  assert out.returncode == 0, out.stderr
  assert shlex.split(out.stdout) == [
      "srun", "--kill-on-bad-exit=1", "bash", script, "--task",
      "--workdir=/shared/run"]
  out = subprocess.run(["bash", script], env=dict(env, MEXD_REPO=REPO),
                       capture_output=True, text=True, timeout=60)
  assert out.returncode == 2 and "sbatch" in out.stderr
  out = subprocess.run(["bash", script], env=dict(env, MEXD_REPO=str(tmp_path)),
                       capture_output=True, text=True, timeout=60)
  assert out.returncode == 2 and "not a mexd checkout" in out.stderr


# --- launch/tpu_vm.sh ---------------------------------------------------------


def test_shell_scripts_parse():
  for name in ("tpu_vm.sh", "slurm_gpu.sbatch"):
    out = subprocess.run(["bash", "-n", os.path.join(LAUNCH, name)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, (name, out.stderr)


TPU_FLAGS = ["--name=mexd-v4", "--zone=us-central2-b", "--project=proj",
             "--accelerator=v4-32", "--create", "--spot",
             "--ref=my-branch", "--config=configs/cifar100.py:byot",
             "--workdir=gs://bucket/runs/c100", "--",
             "--config.num_epochs=3", "--config.method=a b"]


def _tpu_vm(tmp_path, *flags):
  """Runs tpu_vm.sh with a fake gcloud; returns (stdout, gcloud calls)."""
  bindir = tmp_path / "bin"
  bindir.mkdir(exist_ok=True)
  calls = tmp_path / "calls"  # One file per gcloud call: its arguments.
  calls.mkdir(exist_ok=True)
  gcloud = bindir / "gcloud"
  gcloud.write_text(f"#!/bin/bash\nn=$(ls {calls} | wc -l)\n"
                    f"printf '%s\\0' \"$@\" > {calls}/$((n + 1))\n")
  gcloud.chmod(0o755)
  out = subprocess.run(
      ["bash", os.path.join(LAUNCH, "tpu_vm.sh"), *flags],
      env=dict(os.environ, PATH=f"{bindir}:{os.environ['PATH']}"),
      capture_output=True, text=True, timeout=60)
  assert out.returncode == 0, out.stderr
  files = sorted(calls.iterdir(), key=lambda f: int(f.name))
  return out.stdout, [f.read_text().split("\0")[:-1] for f in files]


def _printed(stdout):
  """The commands a dry run printed (`+ cmd` lines), as argument lists."""
  cmds = []
  for line in stdout.splitlines():
    if line.startswith("+ "):
      # The line is bash-quoted (printf %q): let bash split it.
      out = subprocess.run(["bash", "-c", "printf '%s\\0' " + line[2:]],
                           capture_output=True, text=True, timeout=60,
                           check=True)
      cmds.append(out.stdout.split("\0")[:-1])
  return cmds


def test_tpu_vm_commands(tmp_path):
  stdout, calls = _tpu_vm(tmp_path, *TPU_FLAGS)
  assert _printed(stdout) == [["gcloud", *c] for c in calls]
  create, setup, run = calls
  target = ["mexd-v4", "--zone=us-central2-b", "--project=proj"]
  assert create == ["compute", "tpus", "tpu-vm", "create", *target,
                    "--accelerator-type=v4-32",
                    "--version=tpu-ubuntu2204-base", "--spot"]
  for call in (setup, run):
    assert call[:4 + len(target)] == ["compute", "tpus", "tpu-vm", "ssh",
                                      *target]
    assert "--worker=all" in call
    assert call[-1].startswith("--command=")
  setup_cmd = setup[-1][len("--command="):]
  run_cmd = run[-1][len("--command="):]
  for cmd in (setup_cmd, run_cmd):  # Valid bash on the workers.
    check = subprocess.run(["bash", "-n", "-c", cmd], capture_output=True,
                           text=True, timeout=60)
    assert check.returncode == 0, (cmd, check.stderr)
  assert "git remote add origin https://github.com/mexd/mexd.git" in setup_cmd
  assert "git fetch -q --depth 1 origin my-branch" in setup_cmd
  # A gs:// workdir is passed as it is (no gcsfuse mount), with the clients.
  assert ('pip" install -q -e "$HOME/mexd" "jax[tpu]" gcsfs '
          'google-cloud-storage\n') in setup_cmd
  assert "gcsfuse" not in setup_cmd
  assert run_cmd.endswith(
      "python -m mexd.train --multiprocess "
      "--config=configs/cifar100.py:byot --workdir=gs://bucket/runs/c100"
      r" --config.num_epochs=3 --config.method=a\ b")


def test_tpu_vm_installs_the_extras_asked_for(tmp_path):
  _, calls = _tpu_vm(tmp_path, "--name=t", "--zone=z", "--extras=stream",
                     "--workdir=/mnt/nfs/run", "--config=imagenet")
  setup_cmd = calls[0][-1][len("--command="):]
  assert 'pip" install -q -e "$HOME/mexd[stream]" "jax[tpu]"\n' in setup_cmd
  check = subprocess.run(["bash", "-n", "-c", setup_cmd], capture_output=True,
                         text=True, timeout=60)
  assert check.returncode == 0, check.stderr
  proc = subprocess.run(
      ["bash", os.path.join(LAUNCH, "tpu_vm.sh"), "--name=t", "--zone=z",
       "--workdir=/w", "--extras=stream;rm", "--dry-run"],
      capture_output=True, text=True, timeout=60)
  assert proc.returncode == 2 and "comma-separated" in proc.stderr


def test_tpu_vm_dry_run_runs_nothing(tmp_path):
  stdout, calls = _tpu_vm(tmp_path, "--dry-run", *TPU_FLAGS)
  assert calls == []
  printed = _printed(stdout)
  assert [c[:5] for c in printed] == [
      ["gcloud", "compute", "tpus", "tpu-vm", "create"],
      ["gcloud", "compute", "tpus", "tpu-vm", "ssh"],
      ["gcloud", "compute", "tpus", "tpu-vm", "ssh"]]
  # Without --create / with --skip-setup only the training command is left.
  stdout, _ = _tpu_vm(tmp_path, "--dry-run", "--name=t", "--zone=z",
                      "--workdir=/mnt/nfs/run", "--skip-setup", "--detach")
  (run,) = _printed(stdout)
  assert run[-1] == (
      '--command=cd "$HOME/mexd" && source "$HOME/mexd-venv/bin/activate" && '
      "nohup python -m mexd.train --multiprocess --config=configs/digits.py "
      '--workdir=/mnt/nfs/run > "$HOME/mexd-train.log" 2>&1 < /dev/null &')


@pytest.mark.parametrize("flags,message", [
    (["--zone=z", "--workdir=w"], "--name is required"),
    (["--name=t", "--workdir=w"], "--zone is required"),
    (["--name=t", "--zone=z"], "--workdir is required"),
    (["--name=t", "--zone=z", "--workdir=w", "--bogus=1"], "unknown flag"),
    (["--name=t", "--zone=z", "--workdir=w", "--spot"], "--spot only"),
    (["--name=t", "--zone=z", "--workdir=gs:///runs"], "has no bucket"),
])
def test_tpu_vm_flag_errors(flags, message):
  out = subprocess.run(["bash", os.path.join(LAUNCH, "tpu_vm.sh"), *flags],
                       capture_output=True, text=True, timeout=60)
  assert out.returncode == 2 and message in out.stderr, out.stderr

"""The method comparison (python -m benchmarks.methods): aggregation, tables,
plans, one tiny run and its resume, and the ablation built on it."""

import json
import os
import shutil

import jax
import numpy as np
import pytest

from benchmarks import ablation
from benchmarks import ledger
from benchmarks import methods
from benchmarks import report
from benchmarks import rows
from benchmarks import study
from benchmarks import tables
from mexd import config_lib
from mexd import train
from mexd.losses import imta


def test_aggregate_hand_numbers():
  # exit 0: 0.90, 0.92, 0.94 -> mean 0.92, std (ddof=1) 0.02.
  # exit 1: 0.99 three times -> std 0.
  agg = tables.aggregate([[0.90, 0.99], [0.92, 0.99], [0.94, 0.99]])
  np.testing.assert_allclose(agg["mean"], [0.92, 0.99])
  np.testing.assert_allclose(agg["std"], [0.02, 0.0], atol=1e-12)
  assert agg["n"] == 3
  assert tables.format_cell(agg["mean"][0], agg["std"][0], 3) == "92.0 ± 2.0"
  assert tables.format_cell(0.98765, 0.0, 1, digits=2) == "98.77"
  one = tables.aggregate([[0.5, 0.6]])
  assert one["std"] == [0.0, 0.0] and one["n"] == 1
  with pytest.raises(ValueError):
    tables.aggregate([])


def _rec(method, seed, acc, setting="full"):
  return {"setting": setting, "method": method, "seed": seed,
          "table_row": True, "test_acc": acc, "val_acc": acc, "steps": 10,
          "epochs": 1, "train_seconds": 1.0, "wall_seconds": 2.0}


def test_markdown_table_methods_by_exits():
  records = [_rec("pl", 0, [0.5, 0.75, 1.0]), _rec("pl", 1, [0.7, 0.75, 1.0]),
             _rec("ce", 0, [0.4, 0.6, 0.8]), _rec("ce", 1, [0.6, 0.6, 0.8]),
             _rec("erde", 0, [0.1, 0.2, 0.3]), _rec("erde", 1, [0.1, 0.2, 0.3]),
             dict(_rec("kd", 0, [0.0] * 3), error="boom")]
  agg = tables.aggregate_records(records)
  assert list(agg["full"]) == ["ce", "pl", "erde"]  # Table order, no error.
  table = tables.markdown_table(agg["full"]).splitlines()
  assert table[0] == ("| method | exit 0 | exit 1 | exit 2 | seeds | steps "
                      "| train s / run |")
  assert len(table) == 2 + 3
  # ce exit 0: mean 0.5, std of (0.4, 0.6) with ddof=1 = 0.1414.
  assert table[2].startswith("| ce | 50.0 ± 14.1 | 60.0 ± 0.0 | 80.0 ± 0.0 |")
  assert table[3].startswith("| pl | 60.0 ± 14.1 | 75.0 ± 0.0 | 100.0 ± 0.0")
  assert table[4].startswith("| erde (student) | 10.0 ± 0.0 |")


def test_expand_methods_and_configs():
  assert rows.expand_methods(["pl_semisup", "erde", "ce"], "full") == [
      "ce", "ce_student", "kd", "erde"]
  assert rows.expand_methods(["erde", "pl", "pl_semisup"], "limited",
                             with_kd=False) == [
                                 "pl", "pl_semisup", "ce_student", "erde"]
  semi = study.make_config("digits", "limited", "pl_semisup", 1)
  plain = study.make_config("digits", "limited", "pl", 1)
  assert semi.method == plain.method == "pl"
  assert semi.data.unlabeled_batch > 0 and plain.data.unlabeled_batch == 0
  assert semi.data.labeled_per_class == plain.data.labeled_per_class == 10
  student = study.make_config("digits", "full", "erde", 0, 3,
                              teacher_workdir="/t")
  assert tuple(student.model.kwargs.widths) == (16, 32, 64)
  assert student.teacher_workdir == "/t" and student.num_epochs == 3
  fm = study.make_config("fashion_mnist", "limited", "ce_student", 0, 2)
  assert fm.method == "ce" and fm.data.unlabeled_batch == 0
  assert tuple(fm.model.kwargs.widths) == (8, 16, 32, 64)
  # The labeled subset is drawn per seed in the limited setting only.
  assert semi.data.split_seed == plain.data.split_seed == 1
  assert study.make_config("digits", "full", "pl", 3).data.split_seed == 0
  assert study.make_config("digits", "limited", "pl", 3,
                           split_per_seed=False).data.split_seed == 0
  # Equal optimizer steps: 1,000 labeled rows, batch 128 (64 unlabeled):
  # 7 steps / epoch labeled-only, 15 semi-supervised: 100 -> 47 epochs.
  eq = study.make_config("fashion_mnist", "limited", "pl_semisup_eqsteps", 0)
  full = study.make_config("fashion_mnist", "limited", "pl_semisup", 0)
  assert (full.num_epochs, eq.num_epochs) == (100, 47)
  assert eq.data.unlabeled_batch == 64
  arch = study.make_config("fashion_mnist", "limited", "ce_student", 0,
                           model=study.parse_model(
                               "head=conv,downsample=maxpool,widths=(1, 2)"))
  assert (arch.model.kwargs.head, arch.model.kwargs.downsample) == (
      "conv", "maxpool")
  assert tuple(arch.model.kwargs.widths) == (8, 16, 32, 64)  # Student's.
  assert study.parse_model("widths=(4, 8),head=conv") == {
      "widths": (4, 8), "head": "conv"}
  assert study.parse_epochs("full=2,limited=5") == {"full": 2, "limited": 5}
  assert study.parse_epochs("7") == {"*": 7}


def test_plan_is_seed_major_and_waits_for_teachers(tmp_path, monkeypatch):
  tasks = study.plan("digits", ["full", "limited"], ["erde", "pl_semisup"],
                     [0, 1], {}, str(tmp_path), with_kd=False)
  names = [(t["seed"], t["setting"], t["method"]) for t in tasks]
  assert names[:4] == [(0, "full", "ce"), (0, "full", "ce_student"),
                       (0, "full", "erde"), (0, "limited", "ce")]
  assert not tasks[0]["table_row"] and tasks[1]["table_row"]
  assert tasks[2]["teacher_workdir"] == study.run_dir(
      str(tmp_path), "full", "ce", 0)
  # A longer teacher budget is its own row; teacher_seed shares one.
  shared = study.plan("digits", ["full"], ["erde"], [0, 1], {"*": 2},
                      str(tmp_path), with_kd=False, teacher_epochs=5,
                      teacher_seed=0)
  names = [(t["seed"], t["method"], t["epochs"]) for t in shared]
  assert names == [(0, "ce_teacher", 5), (0, "ce_student", 2),
                   (0, "erde", 2), (1, "ce_student", 2), (1, "erde", 2)]
  assert shared[0]["table_row"]
  assert shared[4]["teacher_workdir"] == study.run_dir(
      str(tmp_path), "full", "ce_teacher", 0)
  order = []
  monkeypatch.setattr(study, "run_one", lambda t: order.append(
      t["method"]) or {"method": t["method"]})
  # erde first in the list still runs after its teacher.
  study.run_tasks([tasks[2], tasks[0]], 1, lambda r: None)
  assert order == ["ce", "erde"]


def test_imta_second_stage_starts_from_its_first_stage(tmp_path):
  tasks = study.plan("digits", ["limited"], ["imta2"], [0], {},
                     str(tmp_path))
  assert [t["method"] for t in tasks] == ["ce_ge", "imta2"]
  stage1 = study.run_dir(str(tmp_path), "limited", "ce_ge", 0)
  assert tasks[1]["teacher_workdir"] == stage1
  c1, c2 = (study.task_config(t) for t in tasks)
  assert c1.method == "ce" and c1.gradient_equilibrium
  assert c2.method == "imta" and c2.loss.imta.target == "teacher"
  assert c2.teacher_workdir == c2.init_workdir == stage1
  assert c2.optimizer.trainable == imta.CLASSIFIERS
  # The run paths are machine-specific: not part of a ledger match.
  assert ledger.config_diff({"init_workdir": "/m1/a"},
                            {"init_workdir": "/m2/a"}) == []


def test_teacher_is_retrained_only_for_a_student_that_trains(
    tmp_path, monkeypatch):
  tasks = study.plan("digits", ["full"], ["erde"], [0], {}, str(tmp_path),
                     with_kd=False)
  teacher, student = tasks[0], tasks[2]
  calls = []

  def fake_run_one(t, need_workdir=False):
    calls.append((t["method"], need_workdir))
    return {"method": t["method"], "reused": "ledger"}

  monkeypatch.setattr(study, "run_one", fake_run_one)
  # Both known only from the ledger: the teacher's checkpoint is not needed.
  monkeypatch.setattr(study, "in_ledger", lambda t: True)
  study.run_tasks([teacher, student], 1, lambda r: None)
  assert calls == [("ce", False), ("erde", False)]
  # The student must train: its teacher is retrained first, for the weights.
  calls.clear()
  monkeypatch.setattr(study, "in_ledger", lambda t: t is not student)
  study.run_tasks([teacher, student], 1, lambda r: None)
  assert calls == [("ce", False), ("ce", True), ("erde", False)]


@pytest.fixture
def fast_compile():
  """Plumbing only: fast compiles (as flax's train_test.py does)."""
  old = jax.config.read("jax_disable_most_optimizations")
  jax.config.update("jax_disable_most_optimizations", True)
  yield
  jax.config.update("jax_disable_most_optimizations", old)


@pytest.mark.slow
def test_one_run_writes_json_markdown_and_resumes(tmp_path, fast_compile):
  del fast_compile
  first = study.plan("digits", ["limited"], ["ce", "pl"], [0, 1],
                     {"*": 1}, str(tmp_path / "runs"),
                     ledger=str(tmp_path / "ledger"))
  assert len(first) == 4
  records = study.run_tasks(first, 1, lambda r: None)
  assert all("error" not in r for r in records), records
  assert records[0]["reused"] is False
  args = {"data": "digits", "out": str(tmp_path / "out"),
          "command": "python -m benchmarks.methods --test", "flags": {}}
  rep = report.build_report(records, args, 1.0, True)
  report.write_outputs(rep, str(tmp_path / "docs"), plots=True)
  with open(tmp_path / "out" / "methods_digits.json") as f:
    saved = json.load(f)
  acc = saved["aggregates"]["limited"]["ce"]["test_acc"]
  assert len(acc["mean"]) == 3 and acc["n"] == 2
  assert saved["runs"][0]["steps"] >= 1 and saved["git"]["commit"]
  # The paired difference is the mean of the per-seed differences.
  by = {(r["method"], r["seed"]): np.asarray(r["test_acc"])
        for r in saved["runs"]}
  want = ((by["pl", 0] - by["ce", 0]) + (by["pl", 1] - by["ce", 1])) / 2
  diff = saved["aggregates"]["limited"]["pl"]["diff"]
  np.testing.assert_allclose(diff["mean"], want, atol=1e-12)
  assert diff["reference"] == "ce" and diff["n"] == 2
  assert any(c["claim"].startswith("early exits gain")
             for c in saved["claims"])
  curves = saved["curves"]["limited"]["ce"]
  assert len(curves["exit_macs"]) == 3 and curves["seeds"] == [0, 1]
  np.testing.assert_allclose(
      curves["anytime_mean"], (by["ce", 0] + by["ce", 1]) / 2, atol=1e-12)
  for kind in ("exits", "diff", "anytime", "budget"):
    assert (tmp_path / "out" / f"methods_digits_limited_{kind}.png").exists()
  md = (tmp_path / "docs" / "results_digits.md").read_text()
  assert "## Setting: limited" in md and "| ce |" in md
  assert "## Claims of the seed papers" in md and "| pl | ce |" in md
  assert "python -m benchmarks.methods --test" in md
  # Resumable: the finished run is read back from its workdir, not
  # retrained; and from the ledger alone once the workdirs are gone.
  shutil.rmtree(tmp_path / "ledger")
  again = study.run_tasks(first, 1, lambda r: None)
  assert [r["reused"] for r in again] == [True] * 4
  assert again[0]["test_acc"] == records[0]["test_acc"]
  shutil.rmtree(tmp_path / "runs")  # The ledger was rewritten meanwhile.
  third = study.run_tasks(first, 1, lambda r: None)
  assert [r["reused"] for r in third] == ["ledger"] * 4
  assert third[3]["test_acc"] == records[3]["test_acc"]
  assert third[3]["curves"] == records[3]["curves"]


def test_ledger_config_diff():
  old = {"a": 1, "b": {"c": [1, 2], "d": None}, "progress_bar": True}
  # Added fields, unset values and resumable fields do not invalidate a run.
  assert ledger.config_diff(old, {
      "a": 1, "b": {"c": (1, 2), "e": 5}, "progress_bar": False,
      "new": 3}) == []
  assert ledger.config_diff(old, {"a": 2, "b": {"c": [1, 3]}}) == [
      "a", "b.c"]
  assert ledger.config_diff(old, {"b": {"c": [1, 2]}}) == ["a"]
  assert ledger.config_diff({"teacher_workdir": "/m1/ce"}, {
      "teacher_workdir": "/m2/ce"}) == []


@pytest.mark.parametrize("protocol", ["fashion_mnist_limited",
                                      "fashion_mnist_full", "digits", "smoke"])
def test_every_protocol_plans_valid_configs(protocol, tmp_path):
  """Each protocol's every run config validates and builds its method."""
  p = methods.PROTOCOLS[protocol]
  tasks = study.plan(p["data"], p["settings"], p["methods"],
                     [int(s) for s in p["seeds"]],
                     study.parse_epochs(p["epochs"]), str(tmp_path),
                     teacher_epochs=p.get("teacher_epochs"),
                     teacher_seed=p.get("teacher_seed"))
  planned = {t["method"] for t in tasks}
  assert {"ce", "pl", "eed", "mate", "erde", "kd", "ce_student"} <= planned
  if "limited" in p["settings"]:
    assert {"pl_semisup", "pl_semisup_eqsteps"} <= planned
  for t in tasks:
    c = study.make_config(t["data"], t["setting"], t["method"], t["seed"],
                          t["epochs"], t["teacher_workdir"])
    config_lib.validate(c)
    train.build_method(c)
    if t["method"] in ("erde", "kd"):
      assert c.teacher_workdir and os.path.basename(
          os.path.dirname(c.teacher_workdir)) in ("ce", "ce_teacher")
  assert len({t["seed"] for t in tasks}) == len(p["seeds"])


@pytest.mark.slow
def test_ablation_runs_variants_and_pairs_them(tmp_path, fast_compile):
  del fast_compile
  spec = dict(data="digits", setting="limited", methods=["ce", "pl"],
              seeds=[0, 1], epochs=1, title="test",
              variants=[dict(name="a", label="A", model="head=pool_dense"),
                        dict(name="b", label="B", model="head=conv")])
  runs = ablation.run_variants(spec, [0, 1], str(tmp_path / "runs"),
                               str(tmp_path / "ledger"))
  assert all("error" not in r for rs in runs.values() for r in rs), runs
  summary = ablation.summarize(spec, runs)
  b = summary["variants"][1]
  acc = {(r["method"], r["seed"]): np.asarray(r["val_acc"])
         for r in runs["b"]}
  ref = {(r["method"], r["seed"]): np.asarray(r["val_acc"])
         for r in runs["a"]}
  want = ((acc["ce", 0] - ref["ce", 0]) + (acc["ce", 1] - ref["ce", 1])) / 2
  np.testing.assert_allclose(b["vs_baseline"]["ce"]["val"]["mean"], want,
                             atol=1e-12)
  assert b["aggregates"]["pl"]["val_diff"]["reference"] == "ce"
  path = tmp_path / "results_test.md"
  ablation.write_markdown(str(path), spec, summary, "python x", "today",
                          {"commit": "abc", "dirty": False})
  text = path.read_text()
  assert "## B" in text and "Δ pl − ce" in text

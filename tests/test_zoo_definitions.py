"""The scenario zoo's definitions and summary arithmetic (benchmarks/zoo.py); no training."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from benchmark_support import load_benchmark

from accord.data.faults import FAULT_KINDS
from accord.scenario import build_scenario

# learning_quality first: zoo then imports this very module, so its run_one pickles into
# the worker processes by name.
learning_quality = load_benchmark("learning_quality")
zoo = load_benchmark("zoo")


def test_the_zoo_is_broad_enough() -> None:
    assert len(zoo.ZOO) >= 16
    covered = zoo.fault_kinds_covered()
    assert set(FAULT_KINDS) | {"mixed", "late-start", "switches-off", "intermittent"} <= covered
    assert len([kind for kind in covered if kind.startswith("scale x")]) >= 2
    specs = [{**learning_quality.SPEC_DEFAULTS, **e["spec"]} for e in zoo.ZOO.values()]
    assert {"digits", "breast-cancer", "wine", "synthetic", "synthetic-hard"} <= {
        s["dataset"] for s in specs
    }
    assert {"iid", "dirichlet", "shards"} <= {s["partition"] for s in specs}
    alphas = {s["alpha"] for s in specs if s["partition"] == "dirichlet"}
    assert min(alphas) <= 0.1 and max(alphas) >= 1.0
    assert min(s["nodes"] for s in specs) == 4 and max(s["nodes"] for s in specs) == 100
    assert all(s["dataset"].startswith("synthetic") for s in specs if s["nodes"] >= 100)
    issue = [e["issue"] for e in zoo.ZOO.values() if e.get("issue")]
    assert len(issue) == 6
    assert set(zoo.SUBSETS["quick"]) < set(zoo.ZOO)


@pytest.mark.parametrize("name", list(zoo.ZOO))
def test_every_scenario_builds_and_states_its_faulty_share(name: str) -> None:
    settings = learning_quality.scenario_settings(zoo.ZOO[name]["spec"], seed=0)
    data = build_scenario(settings)
    counts = {node.node_id: node.sample_count for node in data.nodes}
    share = sum(counts[n] for n in data.faulty_nodes) / sum(counts.values())
    if settings.faulty_count == 0:
        assert share == 0.0
    else:
        assert 0.05 <= share <= 0.5, f"{name}: faulty share {share:.2f}"
        # Never every node faulty in a round (the oracle always has an honest node).
        assert all(len(data.faulty_in_round(r)) < len(data.nodes) for r in range(100))


def test_an_unknown_spec_key_is_refused() -> None:
    with pytest.raises(ValueError, match=r"scenario spec: unknown keys \['nodez'\]"):
        learning_quality.scenario_settings({"nodez": 3}, seed=0)


def _run(policy: str, seed: int, final: float | None, **weights: Any) -> dict[str, Any]:
    base = {"end": 0.0, "max_while_faulty": None, "recoveries": [], "free_riders": []}
    return {
        "scenario": "s",
        "policy": policy,
        "seed": seed,
        "final_accuracy": final,
        "diverged": None if final is not None else "validation loss is not finite at round 3",
        "faulty_share": 0.3,
        "weights": {**base, **weights},
        "policy_seconds_per_round": 0.01,
    }


def test_wins_ties_and_losses_use_paired_differences() -> None:
    runs = {
        # +2, +2, +2 points: a win. +3, −1, +1: mean 1 < ... a tie. −5 on every seed: a loss.
        "win": [_run("actor-critic", s, 0.92) for s in range(3)]
        + [_run("fedavg", s, 0.90) for s in range(3)],
        "tie": [_run("actor-critic", s, a) for s, a in enumerate([0.93, 0.89, 0.91])]
        + [_run("fedavg", s, 0.90) for s in range(3)],
        "diverged": [_run("actor-critic", s, None) for s in range(3)]
        + [_run("fedavg", s, 0.05) for s in range(3)],
    }
    result = zoo.compare(runs, "actor-critic", "fedavg")
    assert result["wins"]["scenarios"] == ["win"]
    assert result["ties"]["scenarios"] == ["tie"]
    assert result["losses"]["scenarios"] == ["diverged"]  # a diverged seed counts as 0


def test_weight_targets_pass_fail_and_do_not_apply() -> None:
    good = [_run("actor-critic", s, 0.9, end=0.01, max_while_faulty=0.05) for s in range(2)]
    bad = [*good[:1], _run("actor-critic", 1, 0.9, end=0.03, max_while_faulty=0.2)]
    assert zoo.weight_targets(good, False, [0.3])["end_weight_le_2pct"] == "pass"
    verdict = zoo.weight_targets(bad, False, [0.3])
    assert verdict["end_weight_le_2pct"] == "fail (seed 1: 3.0 %)"
    assert verdict["while_faulty_lt_10pct"] == "fail (seed 1: 20.0 %)"
    assert verdict["regains_half_share_in_20"] == "n/a"
    assert zoo.weight_targets(bad, True, [0.3])["end_weight_le_2pct"] == "n/a (mild fault)"


def test_weight_figures_follow_the_per_round_truth() -> None:
    # Node a is faulty in rounds 0-39, then honest; node b turns faulty at round 35.
    rounds = 70
    truth = [
        frozenset({"a"} if r < 40 else set()) | frozenset({"b"} if r >= 35 else set())
        for r in range(rounds)
    ]
    probabilities = []
    for r in range(rounds):
        a = 0.05 if r < 40 else (0.02 if r < 50 else 0.3)  # regains 0.3 by round 50
        b = 0.3 if r < 45 else 0.08  # counted from max(30, 35 + 10) = 45 on
        probabilities.append({"a": a, "b": b, "c": 1.0 - a - b})
    share = {"a": 0.4, "b": 0.3, "c": 0.3}

    class Data:
        nodes: tuple[Any, ...] = ()

    figures = learning_quality.weight_figures(probabilities, truth, share, Data())
    assert figures["end"] == pytest.approx(0.08)
    # Rounds 30-39: a alone (0.05); 45 on: b alone (0.08); rounds 40-44: b not yet counted.
    assert figures["max_while_faulty"] == pytest.approx(0.08)
    assert figures["recoveries"] == [
        {"node": "a", "off_round": 40, "share": 0.4, "max_weight": pytest.approx(0.3)}
    ]


def test_accuracy_targets_by_hand() -> None:
    finals = {
        "oracle": [0.95, 0.95],
        "fedavg": [0.90, 0.90],
        "hedge-loo": [0.93, 0.93],
        "fltrust": [0.92, 0.92],
        "zeno": [0.90, 0.90],
        "median": [0.91, 0.91],
        "actor-critic": [0.95, 0.89],
    }
    by_policy = {p: [_run(p, s, a) for s, a in enumerate(v)] for p, v in finals.items()}
    # Mean 92.0 against Hedge-LOO's 93.0 − 0.5; seed 1 is 4.0 points below Hedge-LOO's 93;
    # 3.0 points below the oracle; +2 and −4 against Hedge-LOO (the best rule): a tie.
    assert zoo.accuracy_targets(by_policy, faulty=True) == {
        "floor": "fail (mean 92.0 < hedge-loo 93.0 - 0.5; seed 1: 4.0 below)",
        "no_divergence": "pass",
        "within_1_of_oracle": "fail (3.0 points)",
        "beats_best_rule": "no (hedge-loo)",
        "headroom": "+2.0 (hedge-loo)",  # oracle 95.0, best rule 93.0
    }
    by_policy["actor-critic"] = [_run("actor-critic", s, 0.945) for s in range(2)]
    assert zoo.accuracy_targets(by_policy, faulty=True) == {
        "floor": "pass",
        "no_divergence": "pass",
        "within_1_of_oracle": "pass",
        "beats_best_rule": "yes (hedge-loo)",
        "headroom": "+2.0 (hedge-loo)",
    }


def test_kept_runs_are_found_by_scenario_spec_seed_policy_and_rounds(tmp_path: Path) -> None:
    name = next(iter(zoo.ZOO))
    kept = tmp_path / "runs.jsonl"
    key = zoo.run_key(name, 1, "fedavg", 100)
    assert key != zoo.run_key(name, 1, "fedavg", 50)
    assert key != zoo.run_key(name, 2, "fedavg", 100)
    run = {"scenario": name, "seed": 1, "policy": "fedavg", "final_accuracy": 0.9}
    lines = [
        json.dumps({"key": key, "commit": None, "run": run}),
        '{"key": "torn',  # the zoo was killed while writing its last line
    ]
    kept.write_text("\n".join(lines), encoding="utf-8")
    assert zoo.load_runs(kept) == {key: run}
    kept.write_text("\n".join(reversed(lines)), encoding="utf-8")
    with pytest.raises(SystemExit, match="line 1: not a kept run"):
        zoo.load_runs(kept)
    assert zoo.load_runs(tmp_path / "missing.jsonl") == {}


def test_the_markdown_says_which_runs_were_reused_and_the_time_in_rounds() -> None:
    runs = [
        {**_run(policy, seed, 0.9), "run_seconds": 900.0}
        for policy in ("oracle", "fedavg", "actor-critic")
        for seed in range(2)
    ]
    machine = {"cpu": "cpu", "cpus": 2, "load_average_start": [1.0], "load_average_end": [2.0]}
    output: dict[str, Any] = {
        "setup": {
            "policies": ["fedavg", "actor-critic"],
            "seeds_count": 2,
            "rounds": 100,
            "workers": 2,
        },
        "scenarios": {"s": zoo.summarise_scenario(runs)},
        "aggregate": zoo.aggregate({"s": runs}, ["fedavg", "actor-critic"]),
        "wall_seconds": 60.0,
        "machine": {**machine, "reused_runs": 4},
    }
    text = zoo.markdown(output)
    assert "1.0 min with 2 workers" in text
    assert "4 runs reused from a --runs file (not timed here)" in text
    assert "Time in rounds over every run: 1.50 core-hours." in text
    output["machine"] = {**machine, "reused_runs": 0}
    assert "reused" not in zoo.markdown(output)
    # A pass spliced in by hand before --merge-into kept neither its policies nor its time.
    output["machine"]["spliced"] = [{"scenarios": ["s"], "git_commit": "f6458bfd7"}]
    assert "some policies merged in later in 1 scenario: commit f6458bf on an" in (
        zoo.markdown(output)
    )


def _report(name: str, finals: dict[str, list[float]], seconds: float) -> dict[str, Any]:
    runs = [
        {**_run(policy, seed, accuracy), "scenario": name, "run_seconds": seconds}
        for policy, values in finals.items()
        for seed, accuracy in enumerate(values)
    ]
    policies = [p for p in finals if p != "oracle"]
    return {
        "setup": {"policies": policies, "rounds": 100, "seeds": [0, 1], "seeds_count": 2},
        "scenarios": {name: {"spec": zoo.ZOO[name]["spec"], **zoo.summarise_scenario(runs)}},
        "aggregate": zoo.aggregate({name: runs}, policies),
        "machine": {"cpu": "cpu"},
    }


def test_a_merged_pass_replaces_its_policies_and_judges_the_rest_again() -> None:
    name, other = list(zoo.ZOO)[:2]
    finals = {
        "oracle": [0.95, 0.95],
        "fedavg": [0.90, 0.90],
        "hedge-loo": [0.93, 0.93],
        "actor-critic": [0.90, 0.90],
    }
    report = _report(name, finals, 10.0)
    report["scenarios"][other] = _report(other, finals, 10.0)["scenarios"][other]
    assert report["scenarios"][name]["accuracy_targets"]["floor"].startswith("fail")
    new = [
        {**_run("actor-critic", seed, 0.949), "scenario": name, "run_seconds": 4.0}
        for seed in range(2)
    ]
    record = {"git_commit": "abc", "policies": ["actor-critic"]}
    merged = zoo.merge_into(
        report, {name: new}, ["actor-critic"], {"rounds": 100, "seeds": [0, 1]}, record
    )
    row = merged["scenarios"][name]
    assert row["policies"]["actor-critic"]["final_accuracy_per_seed"] == {0: 0.949, 1: 0.949}
    assert row["policies"]["fedavg"]["final_accuracy_per_seed"] == {0: 0.90, 1: 0.90}
    assert list(row["policies"]) == ["oracle", "fedavg", "hedge-loo", "actor-critic"]
    # Judged again against the kept policies: the floor and the ceiling now pass.
    assert row["accuracy_targets"]["floor"] == "pass"
    assert row["accuracy_targets"]["within_1_of_oracle"] == "pass"
    assert row["spec"] == zoo.ZOO[name]["spec"]
    # Three kept policies' stored 20 s each, and the new runs' 8 s.
    assert row["run_seconds_total"] == pytest.approx(68.0)
    against = merged["aggregate"]["actor-critic_against"]["fedavg"]
    assert against["wins"]["scenarios"] == [name]  # +4.9 points; the other is a tie
    assert against["ties"]["scenarios"] == [other]
    assert merged["scenarios"][other] == report["scenarios"][other]
    assert merged["machine"]["spliced"] == [record]
    assert report["scenarios"][name]["accuracy_targets"]["floor"].startswith("fail")


def test_a_merged_pass_adds_a_scenario_run_with_every_policy() -> None:
    name, new_name = list(zoo.ZOO)[:2]
    finals = {"oracle": [0.95, 0.95], "fedavg": [0.90, 0.90], "actor-critic": [0.945, 0.945]}
    report = _report(name, finals, 10.0)
    runs = [
        {**_run(policy, seed, accuracy), "scenario": new_name, "run_seconds": 1.0}
        for policy, values in finals.items()
        for seed, accuracy in enumerate(values)
    ]
    merged = zoo.merge_into(
        report, {new_name: runs}, list(finals), {"rounds": 100, "seeds": [0, 1]}, {}
    )
    assert list(merged["scenarios"]) == [name, new_name]
    added = merged["scenarios"][new_name]
    assert added["spec"] == zoo.ZOO[new_name]["spec"]
    assert list(added["policies"]) == ["oracle", "fedavg", "actor-critic"]
    assert added["accuracy_targets"]["within_1_of_oracle"] == "pass"
    assert merged["aggregate"]["actor-critic_against"]["fedavg"]["wins"]["count"] == 2


def test_a_merge_is_refused_when_the_report_does_not_match() -> None:
    name = next(iter(zoo.ZOO))
    report = _report(name, {"oracle": [0.9, 0.9], "fedavg": [0.9, 0.9]}, 1.0)
    setup = {"rounds": 100, "seeds": [0, 1]}
    zoo.check_mergeable(report, [name], setup)
    with pytest.raises(zoo.MergeError, match=r"its rounds are 100, this pass's are 50"):
        zoo.check_mergeable(report, [name], {**setup, "rounds": 50})
    with pytest.raises(zoo.MergeError, match=r"its seeds are \[0, 1\], this pass's are \[0\]"):
        zoo.check_mergeable(report, [name], {**setup, "seeds": [0]})
    other = list(zoo.ZOO)[1]
    with pytest.raises(zoo.MergeError, match=f"no scenario '{other}'.*missing: oracle"):
        zoo.check_mergeable(report, [other], setup, ["fedavg"])
    zoo.check_mergeable(report, [other], setup, ["oracle", "fedavg"])  # a new, whole one
    report["scenarios"][name]["spec"] = {"nodes": 3}
    with pytest.raises(zoo.MergeError, match=f"{name}'s spec there is"):
        zoo.check_mergeable(report, [name], setup)
    with pytest.raises(zoo.MergeError, match="not a zoo report"):
        zoo.check_mergeable([], [name], setup)


@pytest.mark.slow
def test_merge_into_reruns_only_the_listed_policies_and_rewrites_the_report(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    name = "issue-wine-4-free-rider"
    report, tables = tmp_path / "zoo.json", tmp_path / "zoo.md"
    common = ["--scenarios", name, "--seeds", "1", "--rounds", "2", "--workers", "1"]
    assert zoo.main([*common, "--policies", "fedavg,hedge-loo"]) == 0
    report.write_text(capsys.readouterr().out, encoding="utf-8")
    before = json.loads(report.read_text(encoding="utf-8"))
    args = [*common, "--policies", "hedge-loo", "--merge-into", str(report)]
    assert zoo.main([*args, "--markdown", str(tables)]) == 0
    printed = capsys.readouterr()
    assert "zoo: merged 1 runs of hedge-loo into" in printed.err
    assert "oracle seed 0" not in printed.err  # the oracle is kept, not re-run
    merged = json.loads(report.read_text(encoding="utf-8"))
    assert json.loads(printed.out) == merged
    assert list(merged["scenarios"][name]["policies"]) == ["oracle", "fedavg", "hedge-loo"]
    kept = merged["scenarios"][name]["policies"]["fedavg"]
    assert kept == before["scenarios"][name]["policies"]["fedavg"]
    [record] = merged["machine"]["spliced"]
    assert record["policies"] == ["hedge-loo"] and record["scenarios"] == [name]
    assert "hedge-loo merged in later in 1 scenario: commit" in tables.read_text("utf-8")
    with pytest.raises(SystemExit, match="its rounds are 2, this pass's are 3"):
        zoo.main([*args[:5], "3", *args[6:]])
    assert json.loads(report.read_text(encoding="utf-8")) == merged


def test_actor_critic_overrides_are_checked_and_key_their_runs() -> None:
    assert zoo.parse_overrides(["harm_decay=0.9", 'credit_method="exact"']) == {
        "harm_decay": 0.9,
        "credit_method": "exact",
    }
    with pytest.raises(SystemExit, match=r"unknown key 'actor_critic\.harm_decai'"):
        zoo.parse_overrides(["harm_decai=0.9"])
    with pytest.raises(SystemExit, match="expected KEY=JSON"):
        zoo.parse_overrides(["harm_decay"])
    with pytest.raises(SystemExit, match="credit_method: 'exact' is not JSON"):
        zoo.parse_overrides(["credit_method=exact"])
    with pytest.raises(SystemExit, match="harm_decay"):
        zoo.parse_overrides(["harm_decay=2.5"])  # the settings' own check: a probability
    name = next(iter(zoo.ZOO))
    plain = zoo.run_key(name, 0, "actor-critic", 100)
    assert zoo.run_key(name, 0, "actor-critic", 100, {}) == plain
    assert zoo.run_key(name, 0, "actor-critic", 100, {"harm_decay": 0.9}) != plain


def test_run_one_builds_the_actor_critic_from_the_overrides() -> None:
    name = "issue-wine-4-free-rider"
    settings = learning_quality.scenario_settings(zoo.ZOO[name]["spec"], seed=0)
    with pytest.raises(Exception, match="harm_decay"):
        learning_quality.run_one((name, settings, "actor-critic", 1, {"harm_decay": 2.5}))


def test_the_verdict_counts_the_targets_and_the_mean_change() -> None:
    name, other = list(zoo.ZOO)[:2]
    finals = {"oracle": [0.95, 0.95], "fedavg": [0.90, 0.90], "actor-critic": [0.90, 0.90]}
    before = _report(name, finals, 1.0)
    before["scenarios"][other] = _report(other, finals, 1.0)["scenarios"][other]
    new = [
        {**_run("actor-critic", seed, 0.95), "scenario": name, "run_seconds": 1.0}
        for seed in range(2)
    ]
    setup = {"rounds": 100, "seeds": [0, 1]}
    after = zoo.merge_into(before, {name: new}, ["actor-critic"], setup, {})
    assert zoo.judged_counts(before)["floor"] == 2  # 90 against FedAvg's 90: met
    assert zoo.judged_counts(before)["within_1"] == 0
    assert zoo.verdict(before, after, [name]) == (
        "floor 2 of 2 (was 2); within a point 1 of 2 (was 0); beats the best rule 0 (was 0); "
        "weight checks 2 pass / 0 fail (was 2 / 0); actor-critic accuracy +5.00 points on "
        "average over the 1 scenarios run"
    )


@pytest.mark.slow
def test_against_judges_an_ablation_without_writing_the_report(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    name = "issue-wine-4-free-rider"
    report = tmp_path / "zoo.json"
    common = ["--scenarios", name, "--seeds", "1", "--rounds", "2", "--workers", "1"]
    assert zoo.main([*common, "--policies", "fedavg,actor-critic"]) == 0
    report.write_text(capsys.readouterr().out, encoding="utf-8")
    stored = report.read_text(encoding="utf-8")
    ablation = ["--policies", "actor-critic", "--actor-critic-set", "harm_decay=0.9"]
    assert zoo.main([*common, *ablation, "--against", str(report)]) == 0
    printed = capsys.readouterr()
    assert f"zoo: against {report}: floor 1 of 1 (was 1);" in printed.err
    assert "over the 1 scenarios run" in printed.err
    assert report.read_text(encoding="utf-8") == stored
    [record] = json.loads(printed.out)["machine"]["spliced"]
    assert record["actor_critic_overrides"] == {"harm_decay": 0.9}
    with pytest.raises(SystemExit, match="judge it with --against"):
        zoo.main([*common, *ablation, "--merge-into", str(report)])

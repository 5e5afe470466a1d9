"""`robodiff bench compare`: evaluations paired episode by episode on their seeds."""

import json

import pytest

from robodiff.bench.compare import run
from robodiff.cli import main
from robodiff.eval.stats import paired_difference, wilson_interval


def write_eval(folder, successes, first_seed=100000):
    folder.mkdir(parents=True)
    rows = [{"episode": i, "seed": first_seed + i, "success": s, "score": 1.0 if s else 0.5}
            for i, s in enumerate(successes)]
    (folder / "episodes.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


def test_paired_difference_counts_only_the_discordant_episodes():
    base = [True] * 10 + [False] * 10
    other = [True] * 10 + [True] * 3 + [False] * 7
    d = paired_difference(base, other)
    assert d["diff"] == pytest.approx(0.15)
    assert (d["only_baseline"], d["only_other"]) == (0, 3)
    assert d["p"] == pytest.approx(0.25)            # 3 wins, no loss: 2 * 0.5**3
    lo, hi = d["ci95"]
    separate = wilson_interval(13, 20)
    assert lo < 0.15 < hi and hi - lo < separate[1] - separate[0]
    same = paired_difference(base, base)
    assert same["diff"] == 0 and same["p"] == 1.0 and same["ci95"] == (0.0, 0.0)


def test_pairing_is_sharper_than_two_separate_intervals_and_follows_seeds(tmp_path):
    # b solves every episode a solves plus six more; rows written in another order still pair by seed
    a = write_eval(tmp_path / "a", [True] * 20 + [False] * 30)
    b = write_eval(tmp_path / "b", [True] * 26 + [False] * 24)
    lines = (b / "episodes.jsonl").read_text().splitlines()
    (b / "episodes.jsonl").write_text("\n".join(reversed(lines)) + "\n")
    result = run([f"evals=[{a},{b}]", "labels=[before,after]"], set())
    before, after = result["rows"]
    assert before["label"] == "before" and before["diff"] == 0
    assert after["success_rate"] == pytest.approx(0.52) and after["diff"] == pytest.approx(0.12)
    assert (after["only_this"], after["only_baseline"]) == (6, 0)
    assert after["diff_ci95"][0] > 0                 # paired: the gain is clear
    assert after["ci95"][0] < before["ci95"][1]      # while the two separate intervals overlap
    assert after["p"] == pytest.approx(2 * 0.5 ** 6)


def test_evaluations_of_different_tasks_are_refused(tmp_path, capsys):
    a = write_eval(tmp_path / "a", [True, False])
    b = write_eval(tmp_path / "b", [True, True])
    (a / "summary.json").write_text(json.dumps({"task": "push_block"}))
    (b / "summary.json").write_text(json.dumps({"task": "so101_pick_place"}))
    assert main(["bench", "compare", f"evals=[{a},{b}]"]) != 0
    err = capsys.readouterr().err.strip()
    assert "different tasks" in err and len(err.splitlines()) == 1
    (b / "summary.json").write_text(json.dumps({"task": "push_block"}))
    assert run([f"evals=[{a},{b}]"], set())["rows"][1]["label"] == str(b)


def garbage(folder):
    (write_eval(folder, [True]) / "episodes.jsonl").write_text("{oops\n")
    return folder


@pytest.mark.parametrize("case, words", [
    ("other_seeds", "same seeded episodes"),
    ("missing", "no evaluation there"),
    ("garbage", "not an episode row"),
    ("one", "at least two"),
])
def test_bad_input_is_one_line(tmp_path, capsys, case, words):
    a = write_eval(tmp_path / "a", [True, False, True])
    b = {"other_seeds": lambda: write_eval(tmp_path / "b", [True, True, True], first_seed=5),
         "missing": lambda: tmp_path / "nothing",
         "garbage": lambda: garbage(tmp_path / "b"),
         "one": lambda: None}[case]()
    evals = f"[{a}]" if b is None else f"[{a},{b}]"
    assert main(["bench", "compare", f"evals={evals}"]) != 0
    err = capsys.readouterr().err.strip()
    assert words in err and "Traceback" not in err and len(err.splitlines()) == 1

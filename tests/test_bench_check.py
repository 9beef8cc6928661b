"""bench/check.py's part runner (the device check of issue 17), with tiny fake parts: a part that
raises, one that outlives its time box, one with a failing step, one that is fine. No model: each
part is a short Python process."""

from __future__ import annotations

import importlib.util
import json
import os
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

FAKE_PARTS = '''
import json, subprocess, sys, time
from pathlib import Path


def boom(context, recorder):
    recorder.results["boom"] = {"started": True}
    recorder.save()
    raise ValueError("boom in the fake part")


def slow(context, recorder):
    worker = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    recorder.results["slow"] = {"measured_before_the_end": 1, "worker_pid": worker.pid}
    recorder.save()
    print("slow: recorded, now sleeping", flush=True)
    time.sleep(120)


def half(context, recorder):
    recorder.step("fine_step", lambda: recorder.results.setdefault("half", {}).update(fine=1))
    recorder.step("broken_step", lambda: 1 / 0)


def fine(context, recorder):
    seen = json.loads((Path(context["out_dir"]) / "check.json").read_text())
    recorder.results["fine"] = {"seen": {name: part["status"] for name, part in seen["parts"].items()}}
'''


def load_check():
    spec = importlib.util.spec_from_file_location("bench_check", ROOT / "bench" / "check.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return True
    return "\nState:\tZ" in state  # a zombie waiting for its new parent: not running


def test_the_runner_records_each_part_in_its_time_box(tmp_path) -> None:
    check = load_check()
    fake = tmp_path / "fake_parts.py"
    fake.write_text(textwrap.dedent(FAKE_PARTS))
    out = tmp_path / "out"
    parts = [check.Part("boom", f"{fake}:boom", 60), check.Part("slow", f"{fake}:slow", 3),
             check.Part("half", f"{fake}:half", 60), check.Part("fine", f"{fake}:fine", 60)]
    result = check.run_check(parts, out, {"out_dir": str(out)}, {"kind": "test"})

    assert json.loads((out / "check.json").read_text()) == result
    statuses = {name: part["status"] for name, part in result["parts"].items()}
    assert statuses == {"boom": "failed", "slow": "timed_out", "half": "failed", "fine": "ok"}
    assert result["status"] == "failed" and result["kind"] == "test"
    # check.json was rewritten after each part: the last part saw the earlier ones' final statuses
    assert result["fine"]["seen"] == {"boom": "failed", "slow": "timed_out", "half": "failed", "fine": "running"}

    boom = result["parts"]["boom"]
    assert boom["error"]["type"] == "ValueError" and boom["error"]["message"] == "boom in the fake part"
    assert "Traceback" in boom["error"]["traceback"] and result["boom"] == {"started": True}
    slow = result["parts"]["slow"]
    assert slow["error"]["type"] == "TimeoutError" and slow["seconds"] < 3 + 15
    assert result["slow"]["measured_before_the_end"] == 1  # what it recorded before the kill is kept
    assert gone(result["slow"]["worker_pid"])  # its worker processes were stopped with it
    half = result["parts"]["half"]
    assert half["steps"]["fine_step"]["status"] == "ok" and half["steps"]["broken_step"]["status"] == "failed"
    assert half["error"]["type"] == "ZeroDivisionError" and half["error"]["step"] == "broken_step"
    assert result["half"] == {"fine": 1}

    log = (out / "check.log").read_text()
    assert "ValueError: boom in the fake part" in log and "ZeroDivisionError" in log
    assert log.count("Traceback (most recent call last)") >= 2
    assert "slow: recorded, now sleeping" in log and "in slow" in log  # the stack dumped before the kill
    assert os.path.isfile(out / "parts" / "slow.json")


def test_derived_numbers_and_targets_come_from_the_json_alone() -> None:
    check = load_check()
    shape = {"layers": 6, "heads": 12, "hidden": 384, "intermediate": 1536, "vocab": 30522, "positions": 512}
    result = {
        "matmul_bf16": {"flops_per_s": 7.5e14},
        "g2_rows": {"person": 440, "hobbit": 520},
        "models": {"minilm": {"shape": shape, "n_heads": 72, "naive_tokens_per_s": 1.0e4,  # packed: from its runs
                              "packed": {"person": {"wall": 36.0, "n_models": 60, "rows": 440, "tokens": 6.0e6,
                                                    "adjust": 20.0}}}},
        "parity": {"person": {"p_value": 0.4}, "hobbit": {"p_value": 0.01}},
        "determinism": {"identical": True},
        "parts": {"smoke": {"status": "ok", "steps": {"oom_halving": {"status": "ok"}}}},
    }
    check.derive(result)
    use = result["models"]["minilm"]["utilisation"]
    assert 70e6 < use["flops_per_token"] < 80e6  # ~75 MFLOP a MiniLM token (issue 17: "about 60")
    assert use["packed"] == 3.0e5 * use["flops_per_token"] / 7.5e14
    bertweet = {"layers": 12, "heads": 12, "hidden": 768, "intermediate": 3072, "vocab": 64001, "positions": 130}
    assert 0.5e9 < check.train_flops_per_token(bertweet) < 0.6e9  # issue 17: 0.55 GFLOP
    hours = result["projected_h1_g2_gpu_hours_estimate"]["minilm"]
    assert abs(hours - 72 * 10 * (36.0 / 60 / 440) * 960 / 3600) < 1e-12
    targets = result["targets"]
    assert targets["minilm.speedup_packed_tokens_per_s"] == {"value": 30.0, "target": ">= 20", "met": True}
    assert targets["minilm.packed_tokens_per_s"]["met"] is True
    assert targets["bertweet-shape.packed_tokens_per_s"]["met"] is None  # not measured
    assert targets["parity.person.p_value"]["met"] is True and targets["parity.hobbit.p_value"]["met"] is False
    assert targets["determinism.identical"]["met"] is True and targets["no_out_of_memory"]["met"] is True


def test_a_result_file_starts_with_its_stamp_and_ends_with_the_load_after(tmp_path, monkeypatch) -> None:
    load_check()  # puts bench/ on the path, as every bench script does
    import record

    result = {**record.stamp(), "numbers": [1, 2]}
    assert result["machine"]["cores"] == os.cpu_count() and result["machine"]["cpu"]
    assert {"torch", "transformers", "headprune"} <= set(result["versions"]) and "T" in result["date"]
    monkeypatch.setattr(record, "RESULTS", tmp_path)
    path = record.finish(result, None, "cpu-thing")
    assert path == tmp_path / f"{result['date'][:10]}-cpu-thing.json"
    written = json.loads(path.read_text())
    assert written["numbers"] == [1, 2] and set(written["load_average"]) == {"before", "after"}
    assert record.finish(written, tmp_path / "named.json", "cpu-thing") == tmp_path / "named.json"

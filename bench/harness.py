"""A harness that runs parts of a benchmark each in a process of its own, in a time box (bench/check.py
is its user): a part still running at the end of its budget gets every thread's Python stack dumped
into the log (faulthandler), is killed with its worker processes and recorded as `timed_out`, with
what it had recorded until then; the next part still runs. `check.json` is rewritten when each part
starts and when it ends; `check.log` beside it holds every line the parts printed; `parts/<part>.json`
is each part's own record, written as it goes (`Recorder`).

A part is "path/to/file.py:function", called as function(context, recorder) in its process, which
runs this file with --child. Standard library only (with bench/record.py)."""

from __future__ import annotations

import argparse
import faulthandler
import importlib.util
import json
import os
import signal
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from record import deep_merge, write_json  # noqa: E402

# ----------------------------------------------------------------------------- the part runner


@dataclass(frozen=True)
class Part:
    """A part: `target` is "path/to/file.py:function", called as function(context, recorder) in a
    process of its own."""

    name: str
    target: str
    budget_s: float
    options: list[str] = field(default_factory=list)  # bench/engine.py options (its sizes)


class Log:
    """Lines to the console and to check.log, from the parent and the parts' reader threads."""

    def __init__(self, path: Path):
        self.file = open(path, "w", encoding="utf-8", errors="replace")
        self.lock = threading.Lock()

    def line(self, text: str) -> None:
        with self.lock:
            sys.stdout.write(text + "\n")
            sys.stdout.flush()
            self.file.write(text + "\n")
            self.file.flush()

    def say(self, text: str) -> None:
        self.line(f"[{time.strftime('%H:%M:%S')}] check: {text}")

    def close(self) -> None:
        self.file.close()


def _copy_lines(stream, log: Log, prefix: str) -> None:
    for line in stream:
        log.line(f"{prefix}| {line.rstrip()}")


def _kill_group(proc: subprocess.Popen) -> None:
    """The part's process and everything it started (its session), if still there."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def run_part(part: Part, out_dir: Path, context: dict, log: Log) -> dict:
    """Run one part in its own process (session), killed past its budget. Returns its entry for
    check.json's "parts" plus "results", what it recorded."""
    parts_dir = out_dir / "parts"
    record_file = parts_dir / f"{part.name}.json"
    context_file = parts_dir / f"{part.name}.context.json"
    record_file.unlink(missing_ok=True)
    write_json(context_file, {**context, "part": part.name, "budget_s": part.budget_s, "options": part.options})
    command = [sys.executable, "-u", str(Path(__file__).resolve()), "--child", part.target,
               "--context", str(context_file), "--record", str(record_file)]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    start = time.monotonic()
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace",
                            start_new_session=True, env=env, cwd=os.getcwd())
    reader = threading.Thread(target=_copy_lines, args=(proc.stdout, log, part.name), daemon=True)
    reader.start()
    timed_out = False
    try:
        try:
            code = proc.wait(timeout=part.budget_s)
        except subprocess.TimeoutExpired:
            timed_out = True
            log.say(f"{part.name}: past its budget of {part.budget_s:g} s: its stacks, then it is stopped")
            proc.send_signal(signal.SIGUSR1)  # faulthandler: every thread's Python stack into the log
            time.sleep(1)  # the dump is written at once; give the reader a moment
            _kill_group(proc)
            code = proc.wait()
    finally:
        _kill_group(proc)  # worker processes it left (batch preparers, reference pools) go too
    reader.join(timeout=5)
    seconds = time.monotonic() - start
    try:
        record = json.loads(record_file.read_text())
    except (OSError, ValueError):
        record = {}
    entry = {"status": record.get("status", "failed"), "seconds": round(seconds, 2), "budget_s": part.budget_s,
             "exit_code": code, "steps": record.get("steps", {})}
    if timed_out:
        entry["status"] = "timed_out"
        entry["error"] = {"type": "TimeoutError",
                          "message": f"still running after its budget of {part.budget_s:g} s: stopped "
                                     f"(its stacks at that moment are in check.log)"}
    elif record.get("error"):
        entry["error"] = record["error"]
    elif entry["status"] != "ok" or code != 0:
        entry["status"] = "failed"
        how = f"killed by signal {-code}" if code < 0 else f"exit code {code}"
        entry["error"] = {"type": "ProcessDied", "message": f"the part's process ended ({how}) without a record"}
    entry["results"] = record.get("results", {})
    return entry


def run_check(parts: list[Part], out_dir: str | Path, context: dict, header: dict | None = None,
              derive: Callable[[dict], None] | None = None) -> dict:
    """Run `parts` in order, each in its time box; check.json is written before the first, when
    each starts and after each (with `derive(result)`'s numbers, recomputed after each part);
    check.log holds everything they printed. Returns check.json's content."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path = out_dir / "check.json"
    log = Log(out_dir / "check.log")
    result: dict = {**(header or {}), "status": "running",
                    "parts": {p.name: {"status": "pending", "budget_s": p.budget_s} for p in parts}}
    start = time.monotonic()

    def save() -> None:
        result["wall_seconds"] = round(time.monotonic() - start, 2)
        write_json(json_path, result)

    def stop(signum, frame):  # the caller's time limit: the part's processes must not outlive us
        raise SystemExit(f"check stopped by signal {signum}")

    previous = signal.signal(signal.SIGTERM, stop) if threading.current_thread() is threading.main_thread() else None
    save()
    try:
        for i, part in enumerate(parts):
            result["parts"][part.name]["status"] = "running"
            save()
            log.say(f"{part.name}: started (budget {part.budget_s:g} s)")
            entry = run_part(part, out_dir, context, log)
            deep_merge(result, entry.pop("results"))
            result["parts"][part.name] = entry
            try:
                if derive is not None:
                    derive(result)
            except Exception:  # a bug in the arithmetic must not cost the measurements
                log.line(traceback.format_exc().rstrip())
            save()
            error = entry.get("error")
            log.say(f"{part.name}: {entry['status']} in {entry['seconds']:.1f} s"
                    + (f" ({error['type']}: {error['message'][:300]})" if error else ""))
            if error and error.get("type") == "NoDevice":
                for later in parts[i + 1:]:
                    result["parts"][later.name].update(status="skipped", error=error)
                break
        statuses = [p["status"] for p in result["parts"].values()]
        result["status"] = "ok" if all(s == "ok" for s in statuses) else "failed"
        save()
        log.say(f"{result['status']}: " + ", ".join(f"{n} {p['status']}" for n, p in result["parts"].items())
                + f"; {result['wall_seconds']:.0f} s; {json_path}")
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
        if result["status"] == "running":
            result["status"] = "interrupted"
            save()
        log.close()
    return result


# ----------------------------------------------------------------------------- a part's process


class NoDevice(RuntimeError):
    """The check was asked for CUDA where there is none: the later parts are skipped."""


class Recorder:
    """What a part records: `results` (merged into check.json, bench/engine.py's schema) and its
    `steps`; `save()` rewrites the part's record file (the parent reads it even after a kill)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.results: dict = {}
        self.steps: dict = {}
        self.status = "running"
        self.error: dict | None = None
        self.start = time.monotonic()

    def save(self) -> None:
        write_json(self.path, {"status": self.status, "error": self.error, "steps": self.steps,
                               "results": self.results, "seconds": round(time.monotonic() - self.start, 2)})

    def step(self, name: str, fn: Callable[[], object]) -> bool:
        """Run one step of the part: an exception is logged with its traceback and recorded, and
        the part goes on with its next step (the part is then failed). True if it succeeded."""
        print(f"[{time.strftime('%H:%M:%S')}] step {name}", flush=True)
        self.steps[name] = {"status": "running"}
        self.save()
        start = time.monotonic()
        try:
            fn()
            self.steps[name] = {"status": "ok", "seconds": round(time.monotonic() - start, 2)}
            ok = True
        except Exception as err:
            traceback.print_exc()
            self.steps[name] = {"status": "failed", "seconds": round(time.monotonic() - start, 2),
                                "error": error_of(err)}
            ok = False
        self.save()
        return ok

    def finish(self, err: BaseException | None = None) -> int:
        if err is not None:
            self.status, self.error = "failed", error_of(err)
        else:
            failed = [n for n, s in self.steps.items() if s["status"] != "ok"]
            self.status = "failed" if failed else "ok"
            if failed:
                first = self.steps[failed[0]]["error"]
                self.error = {**first, "step": failed[0], "failed_steps": failed}
        self.save()
        return 0 if self.status == "ok" else 1


def error_of(err: BaseException) -> dict:
    text = "".join(traceback.format_exception(type(err), err, err.__traceback__))
    return {"type": type(err).__name__, "message": str(err)[:2000], "traceback": text[-6000:]}


def child_main(target: str, context_file: str, record_file: str) -> int:
    faulthandler.enable()
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    recorder = Recorder(record_file)
    recorder.save()
    try:
        context = json.loads(Path(context_file).read_text())
        path, name = target.rsplit(":", 1)
        spec = importlib.util.spec_from_file_location(Path(path).stem, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)
        getattr(module, name)(context, recorder)
    except BaseException as err:  # SystemExit and KeyboardInterrupt included: recorded, then exit 1
        traceback.print_exc()
        return recorder.finish(err)
    return recorder.finish()



def main(argv: list[str] | None = None) -> int:
    """A part's process: `harness.py --child PATH:FUNCTION --context FILE --record FILE`."""
    parser = argparse.ArgumentParser(description="one part of a bench/harness.py run, in its own process")
    parser.add_argument("--child", required=True)
    parser.add_argument("--context", required=True)
    parser.add_argument("--record", required=True)
    args = parser.parse_args(argv)
    return child_main(args.child, args.context, args.record)


if __name__ == "__main__":
    sys.exit(main())

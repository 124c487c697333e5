"""Fault rows about what a run writes: the output folder (someone else's files, an empty name, two runs at once),
the step log, the final save and export, what a killed run leaves, checkpoints (a planted pickle, DeepSpeed's
layout) and the rendezvous port."""

from __future__ import annotations

import os
import signal
import subprocess
import tempfile
import time
from pathlib import Path

from fault_kit import (
    ENV,
    PY,
    REPO,
    Matrix,
    last_error,
    line_with,
    sh,
    snapshot,
    train_log_steps,
    weights_equal,
)


def fault_user_files(m: Matrix) -> dict:
    out = m.fresh("o-user")
    (out / "model").mkdir(parents=True)
    (out / "model" / "model.safetensors").write_bytes(b"the user's own weights")
    (out / "checkpoints").mkdir()
    (out / "checkpoints" / "notes.txt").write_text("the user's notes\n")
    (out / "train_log.jsonl").write_text('{"mine": true}\n')
    before = snapshot(out)
    rc, text = m.train(out)
    rc_force, text_force = sh([PY, "launch/train.py", "--config", str(m.recipe), "--force", f"output_dir={out}"])
    unchanged = snapshot(out) == before
    ok = (rc == 2 and rc_force == 2 and unchanged and "checkpoints/, model/, train_log.jsonl" in text
          and "holds files no run wrote" in text_force)
    return {"outcome": f"exit {rc} (with --force: exit {rc_force}), every file byte-identical: {unchanged}: "
                       f"{last_error(text)[:200]}", "ok": ok, "output_lost": not unchanged}


def fault_empty_output_dir(m: Matrix) -> dict:
    cwd = Path(tempfile.mkdtemp(prefix="cwd-", dir=m.work))
    (cwd / "checkpoints").mkdir()
    (cwd / "checkpoints" / "keep.txt").write_text("the user's\n")
    before = snapshot(cwd)
    train = [PY, str(REPO / "launch" / "train.py"), "--config", str(m.recipe)]
    rc, text = sh([*train, "output_dir="], cwd=cwd)
    rc_dot, text_dot = sh([*train, "output_dir=."], cwd=cwd)
    unchanged = snapshot(cwd) == before
    ok = rc == 2 and rc_dot == 2 and unchanged and "output_dir: empty" in text and "holds files no run" in text_dot
    return {"outcome": f"exit {rc}: {line_with(text, 'output_dir: empty')[:120]}; output_dir=. in a folder with "
                       f"checkpoints/: exit {rc_dot}; the folder unchanged: {unchanged}", "ok": ok,
            "output_lost": not unchanged}


def _holding_run(m: Matrix, out: Path, step: int = 2) -> tuple[subprocess.Popen, str]:
    """A run of ``m``'s recipe started in the background that holds every rank for a minute at ``step``; returns
    once it says so (or ends)."""
    proc = subprocess.Popen([PY, *m.faulty("hold", str(step)), "--config", str(m.recipe), f"output_dir={out}"],
                            cwd=REPO, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    seen = []
    for line in proc.stdout:
        seen.append(line)
        if line.startswith("[fault] holding"):
            break
    return proc, "".join(seen)


def _kill(proc: subprocess.Popen) -> int:
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    return proc.returncode


def fault_concurrent(m: Matrix) -> dict:
    out = m.fresh("o-concurrent")
    first, _ = _holding_run(m, out)
    t0 = time.time()
    cmd = [PY, "launch/train.py", "--config", str(m.recipe), f"output_dir={out}"]
    others = [subprocess.Popen(cmd, cwd=REPO, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
              for _ in range(2)]
    results = [(p.wait(timeout=120), p.stdout.read()) for p in others]
    refused_in = time.time() - t0
    rc_first = _kill(first)  # SIGKILL: the lock must not outlive it
    rc_after, text_after = m.train(out)
    refused = all(rc == 2 and "another run is using this output_dir" in text for rc, text in results)
    steps = train_log_steps(out)
    ok = refused and rc_after == 0 and steps == list(range(1, 13))
    return {"outcome": f"2nd and 3rd run: exit {[rc for rc, _ in results]} within {refused_in:.0f} s "
                       f"({line_with(results[0][1], 'another run')[:150]}); 1st SIGKILLed (exit {rc_first}); a new "
                       f"run then: exit {rc_after}, log steps 1-12 once each: {steps == list(range(1, 13))}",
            "ok": ok, "output_lost": rc_after != 0}


def fault_torn_log(m: Matrix) -> dict:
    out = m.fresh("o-torn-log")
    rc1, text1 = m.train(out, "save_every=2", runner=m.faulty("torn_log", "3,7"))
    rc2, text2 = m.train(out, "save_every=2")
    steps = train_log_steps(out)
    expected = [s for s in range(1, 13) if s != 3]
    ok = (rc1 == -9 and rc2 == 0 and steps == expected and "step 3 not logged" in text1
          and "resumed from step 6/12" in text2 and "dropped 1 line(s) cut short" in text2)
    return {"outcome": f"step 3: half a line then ENOSPC -> {line_with(text1, 'not logged')[-60:]!r}; step 7: half a "
                       f"line then SIGKILL (exit {rc1}); rerun exit {rc2}: "
                       f"{line_with(text2, 'resumed from').removeprefix('[vgid] ')[:40]}, "
                       f"{line_with(text2, 'cut short').split(': ', 1)[-1]}; every line whole JSON, steps "
                       f"{'1-2, 4-12' if steps == expected else steps}", "ok": ok, "output_lost": rc2 != 0}


def _straight_to_export(m: Matrix, out: Path, rc1: int, first: str) -> dict:
    rc2, text2 = m.train(out)
    said = line_with(text2, "resumed from step")
    resumed = said.split(" (checkpoint")[0] + ("; training is complete, exporting the model"
                                               if said.endswith("exporting the model") else "")
    equal, diff = weights_equal(m.reference(), out) if (out / "model").is_dir() else (False, float("nan"))
    steps = train_log_steps(out)
    ok = (rc2 == 0 and "resumed from step 12/12" in resumed and "exporting the model" in resumed and equal
          and steps == list(range(1, 13)) and not (out / "checkpoints").exists())
    return {"outcome": f"{first} (exit {rc1}); rerun exit {rc2}: {resumed.removeprefix('[vgid] ')}, exported; no step "
                       f"trained again (log 1-12 once each: {steps == list(range(1, 13))}); weights max abs diff "
                       f"{diff:.1e} vs uninterrupted; checkpoints removed after DONE", "ok": ok,
            "output_lost": not equal}


def fault_kill_in_export(m: Matrix) -> dict:
    out, rc1, left = m.killed_in_export("o-kill-export")
    return _straight_to_export(m, out, rc1, "SIGKILL inside the export, after the end-of-training checkpoint")


def fault_disk_full_export(m: Matrix) -> dict:
    out = m.fresh("o-enospc-export")
    rc1, text1 = m.train(out, runner=m.faulty("enospc_export"))
    row = _straight_to_export(m, out, rc1, f"ENOSPC writing model/: {last_error(text1)[7:90]}...")
    row["ok"] = row["ok"] and rc1 == 1 and "goes straight to the export" in text1
    return row


def fault_leftovers(m: Matrix) -> dict:
    out, rc1, left = m.killed_in_export("o-leftovers")
    rc2, text2 = m.train(out, runner=m.faulty("kill_after_done"))
    after_done = (out / "DONE").is_file() and (out / "checkpoints").is_dir()
    rc3, text3 = m.train(out)
    temps = sorted(p.name for p in out.iterdir() if p.name.startswith(".model."))
    ok = (rc1 == -9 and left and rc2 == -9 and after_done and rc3 == 2 and not temps
          and not (out / "checkpoints").exists() and (out / "model").is_dir())
    return {"outcome": f"killed in export (exit {rc1}): left {', '.join(left)}; the next run removed it "
                       f"({line_with(text2, 'removed what').rsplit(': ', 1)[-1]}), exported and was SIGKILLed after "
                       f"DONE (exit {rc2}, checkpoints/ still there: {after_done}); the run after: exit {rc3} "
                       f"({last_error(text3)[7:60]}...), checkpoints/ removed: {not (out / 'checkpoints').exists()}, "
                       f"temporary folders left: {temps or 'none'}",
            "ok": ok, "output_lost": not (out / "model").is_dir()}


def _plant_pickle(path: Path, marker: Path) -> None:
    import torch

    class Payload:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)

    torch.save({"module": Payload()}, path)


def fault_planted_pickle(m: Matrix) -> dict:
    out, _, _ = m.killed_in_export("o-pickle")
    folder = out / "checkpoints" / (out / "checkpoints" / "latest").read_text().strip()
    results = []
    for target in ("zero_pp_rank_0_mp_rank_00_model_states.pt", "rng_rank0.pt"):
        original = (folder / target).read_bytes()
        marker = m.work / f"pwned-{target}"
        marker.unlink(missing_ok=True)
        _plant_pickle(folder / target, marker)
        rc, text = m.train(out)
        results.append((target, rc, marker.exists(), line_with(text, "refused to load")))
        (folder / target).write_bytes(original)
    ok = all(rc == 2 and not ran and "refused to load" in msg for _, rc, ran, msg in results)
    parts = [f"{t} (DeepSpeed's load)" if "model_states" in t else f"{t} (ours)" for t, *_ in results]
    return {"outcome": f"os.system pickle planted in {' and in '.join(parts)}: exit {[r[1] for r in results]}, payload "
                       f"ran: {[r[2] for r in results]}; {results[0][3].split('refused to load: ', 1)[-1][:150]}",
            "ok": ok, "output_lost": False}


def _listening(pid: int) -> list[str]:
    """The TCP addresses ``pid`` and its threads listen on (from /proc)."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    found = []
    for proto in ("tcp", "tcp6"):
        for line in Path(f"/proc/net/{proto}").read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:  # 0A: LISTEN
                address, port = fields[1].split(":")
                raw = bytes.fromhex(address)
                if proto == "tcp":
                    host = ".".join(str(b) for b in raw[::-1])
                else:
                    import ipaddress

                    words = [raw[i:i + 4][::-1] for i in range(0, 16, 4)]
                    host = str(ipaddress.IPv6Address(b"".join(words)))
                found.append(f"{host}:{int(port, 16)}")
    return found


def fault_rendezvous(m: Matrix) -> dict:
    proc, _ = _holding_run(m, m.fresh("o-rendezvous"))
    sockets = _listening(proc.pid)
    _kill(proc)
    local = all(s.startswith(("127.", "::1:", "[::1]")) for s in sockets)
    return {"outcome": f"single-process run listens on {', '.join(sockets) or 'nothing'}", "ok": bool(sockets) and local,
            "output_lost": False}


def fault_deepspeed_layout(m: Matrix) -> dict:
    out, _, _ = m.killed_in_export("o-ds-layout")
    rc, text = m.train(out, "keep_checkpoints=true")
    ckpt = out / "checkpoints"
    latest = (ckpt / "latest").read_text().strip() if (ckpt / "latest").is_file() else None
    rc_z, text_z = sh([PY, str(ckpt / "zero_to_fp32.py"), str(ckpt), str(out / "fp32"), "--safe_serialization"])
    same, count = _fp32_matches_model(out)
    ok = rc == 0 and latest == "global_step12" and rc_z == 0 and same
    return {"outcome": f"keep_checkpoints=true: exit {rc}, checkpoints/latest -> {latest}; zero_to_fp32.py "
                       f"checkpoints/ fp32/ (no --tag): exit {rc_z}; {count} tensors, each equal to the exported "
                       f"model's: {same}", "ok": ok, "output_lost": rc != 0}


def _fp32_matches_model(out: Path) -> tuple[bool, int]:
    from safetensors.torch import load_file

    files = sorted((out / "fp32").glob("*.safetensors"))
    if not files:
        return False, 0
    fp32 = {k: v for f in files for k, v in load_file(str(f)).items()}
    model = list(load_file(str(out / "model" / "model.safetensors")).values())
    same = all(any(t.shape == v.shape and bool((t.float() == v.float()).all()) for v in model) for t in fp32.values())
    return same and len(fp32) == len(model), len(fp32)


FAULTS = {
    "output_dir_user_files": ("output_dir holds the user's model/, checkpoints/, train_log.jsonl", fault_user_files,
                              "refused before any write, naming them"),
    "output_dir_empty": ("output_dir= (and output_dir=. in a folder with checkpoints/)", fault_empty_output_dir,
                         "refused"),
    "concurrent_runs": ("3 runs on one output_dir; then the 1st SIGKILLed", fault_concurrent,
                        "2nd, 3rd refused at once; lock not stuck"),
    "log_append_torn": ("train_log append cut short: ENOSPC at step 3, SIGKILL at step 7", fault_torn_log,
                        "whole lines only; resume drops torn line"),
    "kill_in_final_export": ("SIGKILL during the export of the final model (save_every=0)", fault_kill_in_export,
                             "resume goes straight to export"),
    "disk_full_final_export": ("ENOSPC while writing the final model", fault_disk_full_export,
                               "resume goes straight to export"),
    "killed_run_leftovers": ("SIGKILL in the export, then SIGKILL after DONE", fault_leftovers,
                             "temp folders and checkpoints/ cleaned"),
    "planted_pickle": ("os.system pickle in a checkpoint's model states / RNG file", fault_planted_pickle,
                       "refused, payload never runs"),
    "rendezvous_loopback": ("single-process run: listening sockets", fault_rendezvous, "127.0.0.1 only"),
    "deepspeed_layout": ("keep_checkpoints=true, DeepSpeed's zero_to_fp32.py without --tag", fault_deepspeed_layout,
                         "consolidates = exported model"),
}

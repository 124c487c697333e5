"""Markdown of the GPU suite's results (``suite.json`` -> ``suite.md``): a status line per stage, then one table
per stage's figures."""

from __future__ import annotations


def _fmt(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _table(header: list[str], rows: list[list]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *("| " + " | ".join(_fmt(v) for v in row) + " |" for row in rows), ""]


def render_markdown(report: dict) -> str:
    suite, stages = report["suite"], report["stages"]
    lines = [f"# GPU suite ({suite['mode']}), commit {str(suite.get('commit'))[:10]}"
             f"{'+dirty' if suite.get('dirty') else ''}, {suite['started']} .. {suite.get('finished') or 'running'}",
             ""]
    lines += _table(["stage", "status", "seconds", "timeout s", "error"],
                    [[name, s["status"], s["seconds"], s["timeout_s"], (s["error"] or "")[:200]]
                     for name, s in stages.items()])
    result = stages["install"]["result"]
    if result:
        lines += ["## Environment", ""] + _table(["field", "value"], [[k, v] for k, v in result.items()])
    result = stages["unit_tests"]["result"]
    if result:
        lines += ["## Unit tests on the device", ""] + _table(list(result), [list(result.values())])
    result = stages["vgid_step"]["result"]
    if result:
        lines += ["## Tiny VGID run (vgid train + vgid eval)", ""] + _table(list(result), [list(result.values())])
    result = stages["fused_kl"]["result"]
    if result:
        lines += [f"## Fused KL, N={result['N']} H={result['H']} V={result['V']} {result['dtype']} (forward + backward; "
                  f"ours: {result['ours_row_path']} row path)", ""]
        rows = [[impl, *(None if result[impl] is None else result[impl].get(k)
                         for k in ("seconds", "peak_extra_mb", "max_memory_allocated_mb", "loss"))]
                for impl in ("naive", "ours", "liger")]
        lines += _table(["impl", "seconds", "MB above inputs", "max_memory_allocated MB", "loss"], rows)
        lines += _table(["check against naive", "value"], [[k, v] for k, v in result["check"].items()])
    rows = []
    for name in ("train_qwen_full", "train_llava_lora"):
        result = stages[name]["result"]
        if result:
            for kind in ("vgid", "reference"):
                r = result[kind]
                rows.append([result["shape"], "LoRA" if result["lora"] else "full", kind, result["dtype"],
                             r["tokens_per_s_per_gpu"], r["samples_per_s"], r["step_time_s"], r["peak_memory_gb"],
                             r["mfu"]])
            rows.append([result["shape"], "", "vgid / reference", "", result["speedup"], "", "",
                         result["memory_ratio"], ""])
    if rows:
        lines += ["## Training step: product (vgid) vs the authors'-style reference", ""]
        lines += _table(["shape", "mode", "step", "dtype", "tokens/s/GPU", "samples/s", "step s", "peak GB", "MFU"],
                        rows)
    result = stages["plan"]["result"]
    if result:
        lines += ["## vgid plan against the measured peaks (product step)", ""]
        lines += _table(["run", "predicted GB", "required GB", "measured GB", "error", "fits 141 GB"],
                        [[name, *(r or {}).values()] for name, r in result.items()])
    return "\n".join(lines) + "\n"

"""The embedded default: a synthetic benchmark and a tiny vanilla model, built on first use and cached.

Recipes refer to them as ``@tiny/benchmark`` and ``@tiny/vanilla-<family>``; they resolve under
``$VGID_CACHE_DIR/tiny-v<N>`` (default ``~/.cache/vgid_dist/tiny-v<N>``, N = ASSETS_VERSION). Building is guarded by a file lock, so the
ranks of a multi-process launch wait for one builder instead of racing. The vanilla model is the tiny random
model fine-tuned on the benchmark's ``ft_Data`` (the ``tiny-vanilla`` recipe) until it knows the profiles.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import os
import subprocess
import sys
from pathlib import Path

from vgid_dist.errors import ConfigError

TINY_PREFIX = "@tiny/"
# Bumped whenever the synthetic benchmark or the tiny vanilla recipe changes, so caches built by an older
# version are not reused.
ASSETS_VERSION = 5


def cache_dir() -> Path:
    return Path(os.environ.get("VGID_CACHE_DIR", Path.home() / ".cache" / "vgid_dist")).expanduser()


@contextlib.contextmanager
def file_lock(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def ensure_benchmark(folder: Path, *, log=print) -> Path:
    from vgid_dist.data.synthetic import write_synthetic_benchmark

    if not (folder / "synthetic.json").is_file():
        log(f"[vgid] writing the synthetic benchmark to {folder}")
        write_synthetic_benchmark(folder, overwrite=folder.exists())
    return folder


def vanilla_ready(folder: Path) -> bool:
    return (folder / "config.json").is_file() and (folder / "model.safetensors").is_file()


def ensure_vanilla(folder: Path, benchmark: Path, family: str = "llava", *, log=print,
                   in_process: bool = False) -> Path:
    """Build the tiny vanilla model: random init (``models.tiny``), then fine-tune on ft_Data.

    Runs the fine-tuning in a child process by default, so a caller that is itself one rank of a distributed
    job does not mix process groups; the demo (a single process) runs it in-process.
    """
    if vanilla_ready(folder):
        return folder
    ensure_benchmark(benchmark, log=log)
    log(f"[vgid] building the tiny vanilla {family} model in {folder} (random init + fine-tuning on ft_Data)")
    if in_process:
        build_vanilla(folder, benchmark, family)
    else:
        env = {k: v for k, v in os.environ.items()
               if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT",
                            "CROSS_RANK", "CROSS_SIZE", "GROUP_RANK")}
        subprocess.run([sys.executable, "-m", "vgid_dist.assets", "vanilla", "--out", str(folder),
                        "--benchmark", str(benchmark), "--family", family], check=True, env=env)
    return folder


def build_vanilla(folder: Path, benchmark: Path, family: str = "llava") -> Path:
    import shutil

    from vgid_dist.config import load_run_config
    from vgid_dist.data.synthetic import corpus
    from vgid_dist.engine.entry import train
    from vgid_dist.models.tiny import TINY_BUILDERS

    work = folder.with_name(f".{folder.name}.build")
    init = TINY_BUILDERS[family](work / "init", corpus(benchmark))
    cfg = load_run_config("tiny-vanilla", [f"model.path={init}", f"data.root={benchmark}",
                                            f"output_dir={work / 'run'}"])
    train(cfg, force=True)
    trained = work / "run" / "model"
    if folder.exists():
        shutil.rmtree(folder)
    trained.rename(folder)
    shutil.rmtree(work, ignore_errors=True)
    return folder


def resolve_tiny_path(value: str, *, family_hint: str = "llava", log=print) -> str:
    """``@tiny/benchmark`` or ``@tiny/vanilla-<family>`` -> a built local folder; other values unchanged."""
    if not value.startswith(TINY_PREFIX):
        return value
    name = value[len(TINY_PREFIX):]
    root = cache_dir() / f"tiny-v{ASSETS_VERSION}"
    benchmark = root / "benchmark"
    with file_lock(root / ".lock"):
        if name == "benchmark":
            return str(ensure_benchmark(benchmark, log=log))
        if name.startswith("vanilla-"):
            family = name[len("vanilla-"):]
            from vgid_dist.models.tiny import TINY_BUILDERS

            if family not in TINY_BUILDERS:
                raise ConfigError(f"{value}: unknown tiny family {family!r}; expected one of {sorted(TINY_BUILDERS)}")
            return str(ensure_vanilla(root / name, benchmark, family, log=log))
    raise ConfigError(f"{value}: unknown packaged asset; expected @tiny/benchmark or @tiny/vanilla-<family>")


def resolve_assets(cfg, *, log=print):
    """The config with every ``@tiny/...`` path replaced by its built folder."""
    model_path = resolve_tiny_path(cfg.model.path, log=log)
    data_root = resolve_tiny_path(cfg.data.root, log=log)
    return cfg.model_copy(update={"model": cfg.model.model_copy(update={"path": model_path}),
                                  "data": cfg.data.model_copy(update={"root": data_root})})


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m vgid_dist.assets")
    sub = parser.add_subparsers(dest="cmd", required=True)
    v = sub.add_parser("vanilla", help="build a tiny vanilla model")
    v.add_argument("--out", required=True)
    v.add_argument("--benchmark", required=True)
    v.add_argument("--family", default="llava")
    p = sub.add_parser("people", help="a benchmark's forget and retain people as a JSONL folder (vgid forget --data)")
    p.add_argument("--out", required=True, help="folder to write (must not exist)")
    p.add_argument("--benchmark", default=TINY_PREFIX + "benchmark",
                   help="MLLMU-Bench layout folder (default: the embedded synthetic benchmark, built on first use)")
    p.add_argument("--forget-ratio", type=int, default=5, choices=[5, 10, 15])
    args = parser.parse_args(argv)
    if args.cmd == "vanilla":
        build_vanilla(Path(args.out), Path(args.benchmark), args.family)
    elif args.cmd == "people":
        from vgid_dist.data.people_writer import write_people_folder

        out = write_people_folder(resolve_tiny_path(args.benchmark), args.out, args.forget_ratio)
        print(f"wrote {out}: forget.jsonl, retain.jsonl, probes.jsonl, images/")


if __name__ == "__main__":
    main()

"""MLflow tracking: the only package that imports mlflow, and only on rank 0.

One MLflow run per training job. Its id is kept in ``output_dir/mlflow_run_id``, so a requeued or re-run job
continues the same run instead of starting a second one. A sweep creates one parent run and one placeholder run
per cell up front (status SCHEDULED); the job replaces the placeholder by a run that starts when the job does.

Where runs go: ``MLFLOW_TRACKING_URI`` when set (a server, ``http://...``), else a SQLite file under the
working folder (``./mlflow.db``, artifacts in ``./mlruns``), which needs no server. ``VGID_TRACKING=off``
disables tracking. A training job checks the store before any model loads (seconds), then never waits on it:
logging runs in a background thread with a bounded queue and short HTTP retries, and gives up (once, saying
so) when the store stops answering; the run then finishes at full speed and exits with status 3.

What a training run holds:
  params     the flattened resolved configuration (``optim.lr``, ``method.alpha``, ...)
  tags       MLflow's (user, source, git commit, parent), model, forget_ratio, method, seed, git_commit,
             git_dirty, host, slurm_job_id (under Slurm), output_dir, world_size, device
  metrics    ``train/<loss term>``, ``train/lr``, ``train/grad_norm``, ``train/samples_per_s``,
             ``train/tokens_per_s``, ``train/mfu`` (GPU), ``train/peak_mem_gib`` per step (the trainer's
             ``train_log.jsonl`` lines); ``forget/gen_rougeL``, ``retain/class_acc``, ... from the evaluation
             (``reverse/forget/gen_rougeL`` for an evaluation under the reverse attack); ``system/...`` (CPU,
             memory, disk, network, GPUs with nvidia-ml-py) of rank 0's machine every 10 s
  artifacts  config.yaml, metrics.json, train_log.jsonl, eval/ (eval.json, eval_step<N>.json and their
             predictions), table3.md; a sweep cell also gets tradeoff.png

Modules: ``names`` (switches, URIs, run and metric names: no mlflow), ``store`` (the client of one store,
whether a store answers), ``sender`` (the background sender), ``runs`` (the run of one training job, recording
an output folder, ``open_run`` for any other command), ``callback`` (the trainer callback), ``ui`` (``vgid ui``).
"""

from vgid_dist.tracking.callback import TrackingCallback, callback_for
from vgid_dist.tracking.names import (
    DEFAULT_EXPERIMENT,
    EXPERIMENT_ENV,
    KIND_TAG,
    MODEL_ENV,
    PARENT_ENV,
    PARENT_TAG,
    RUN_ID_FILE,
    TRACKING_ENV,
    enabled,
    eval_metric_key,
    eval_metrics,
    read_run_id,
    reference_prefix,
    run_name,
    step_metrics,
    tracking_uri,
    write_run_id,
)
from vgid_dist.tracking.runs import (
    OneRun,
    config_params,
    environment_tags,
    import_finished_output,
    open_run,
    output_artifacts,
    record_output,
    run_tags,
    start_or_resume,
)
from vgid_dist.tracking.store import RunRecord, Tracker, check_store

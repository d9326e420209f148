"""The training run inside the worker: tokenize, train step by step, write, evaluate.

Progress leaves through `emit` after every optimizer step; `stop_requested` is polled at
every step boundary, and a stopped run still writes the adapter of the last completed step.
The adapter is written atomically (`write_adapter`), so the output path always holds either
the previous file or a complete new one.
"""

import logging
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from appliance.data.windows import Windows, token_windows
from appliance.llm.adapters import LoraFactors, read_adapter, write_adapter
from appliance.llm.licenses import LicensePolicy
from appliance.llm.runtime import Runtime
from appliance.llm.texts import chat_template, record_text, tokenize
from appliance.llm.training.engine import LoraTrainer, TrainingModel
from appliance.llm.training.job import TrainingJob

log = logging.getLogger(__name__)

Emit = Callable[[dict[str, Any]], None]
EVAL_CONTEXT_TOKENS = 512
STATS_PREFIX = "appliance.training."


def run_job(job: TrainingJob, emit: Emit, stop_requested: Callable[[], bool]) -> dict[str, Any]:
    """Run `job`; returns the result fields the worker itself measured."""
    settings = job.training_settings()
    threads = settings.threads or os.cpu_count() or 1
    template = chat_template(Path(job.model))
    train_texts = [record_text(r, template) for r in job.records(job.train_records)]
    heldout_texts = [record_text(r, template) for r in job.records(job.heldout_records)]
    emit({"event": "loading", "model": job.train_model})
    log.info("loading %s for training (%d threads)", job.train_model, threads)
    model = TrainingModel(Path(job.train_model), gpu_layers=settings.gpu_layers)
    window = settings.window_tokens
    windows = token_windows(_stream(model, train_texts), window, settings.stride_tokens or window)
    heldout_stream = _stream(model, heldout_texts)
    # a held-out set shorter than one window would be repeated, and a model scores repeated
    # text far better than new text: then only the held-out NLL after training is reported
    validation = (
        token_windows(heldout_stream, window, window) if len(heldout_stream) > window else None
    )
    start = Path(job.start_adapter)
    trainer = LoraTrainer(
        model,
        model.load_adapter(start),
        n_ctx=window,
        threads=threads,
        optimizer=settings.optimizer,
        freeze_a=settings.freeze_a,
        expected_pairs=len(read_adapter(start).factors),
        probe_tokens=windows.data[0].tolist(),
    )
    try:
        progress = _train(
            trainer,
            windows=windows,
            validation=validation,
            job=job,
            emit=emit,
            stop_requested=stop_requested,
        )
        factors = trainer.factors()
    finally:
        trainer.close()
        model.close()
    result: dict[str, Any] = {
        **progress,
        "adapter": None,
        "adapter_bytes": 0,
        "nll_before": None,
        "nll_after": None,
        "nll_after_on_training_copy": None,
        "heldout_tokens": 0,
    }
    if progress["steps"]:
        result.update(
            _write_and_evaluate(
                job,
                progress=progress,
                factors=factors,
                windows=len(windows),
                texts=heldout_texts or train_texts,
                threads=threads,
                emit=emit,
            )
        )
    result["peak_rss_mb"] = peak_rss_mb()
    return result


def _write_and_evaluate(
    job: TrainingJob,
    *,
    progress: dict[str, Any],
    factors: LoraFactors,
    windows: int,
    texts: Sequence[str],
    threads: int,
    emit: Emit,
) -> dict[str, Any]:
    stats = {
        "steps": progress["steps"],
        "epochs": progress["epochs"],
        "tokens": progress["tokens"],
        "windows": windows,
        "records": len(job.train_records),
        "heldout_records": len(job.heldout_records),
        "train_loss": progress["train_loss"],
        "stopped": progress["stopped"],
    }
    if progress["val_loss"] is not None:
        stats["val_loss"] = progress["val_loss"]
    metadata = {**job.metadata, **{STATS_PREFIX + k: v for k, v in stats.items()}}
    log.info("writing %s after %d steps", job.out, progress["steps"])
    out = write_adapter(Path(job.out), factors, job.alpha, job.architecture, metadata)
    written: dict[str, Any] = {"adapter": str(out), "adapter_bytes": out.stat().st_size}
    if not progress["stopped"] and job.evaluate:
        emit({"event": "evaluating"})
        # the same factors without the base-model binding, to score them on the training copy
        unbound = Path(job.start_adapter).with_name("trained-unbound.gguf")
        write_adapter(unbound, factors, job.alpha, job.architecture)
        written.update(_evaluate(job, out, unbound, texts, threads))
    return written


def peak_rss_mb() -> float:
    """This process's peak resident memory since exec (VmHWM).

    Not `ru_maxrss`: Linux carries the parent's high-water mark across fork/vfork + exec
    into it, so a worker started by a big parent would report the parent's memory.
    """
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024.0
    raise OSError("/proc/self/status has no VmHWM line")


def _stream(model: TrainingModel, texts: Sequence[str]) -> list[int]:
    return [token for text in texts for token in tokenize(model.handle, text)]


def _train(
    trainer: LoraTrainer,
    *,
    windows: Windows,
    validation: Windows | None,
    job: TrainingJob,
    emit: Emit,
    stop_requested: Callable[[], bool],
) -> dict[str, Any]:
    settings = job.training_settings()
    total = settings.epochs * len(windows)
    if settings.max_steps:
        total = min(total, settings.max_steps)
    emit(
        {
            "event": "started",
            "windows": len(windows),
            "validation_windows": len(validation) if validation else 0,
            "repeated": windows.repeated,
            "steps_total": total,
            "window_tokens": windows.window_tokens,
        }
    )
    rng = np.random.default_rng(settings.seed)
    steps = epochs = 0
    stopped = False
    train_seconds = 0.0
    losses: list[float] = []
    val_loss = None
    while steps < total and not stopped:
        epochs += 1
        losses = []
        for index in rng.permutation(len(windows)):
            if steps >= total or stop_requested():
                stopped = steps < total
                break
            rate = settings.learning_rate
            if settings.lr_decay == "linear":
                rate *= 1.0 - steps / total
            began = time.perf_counter()
            loss = trainer.step(windows.data[index], windows.labels[index], rate)
            elapsed = time.perf_counter() - began
            train_seconds += elapsed
            steps += 1
            losses.append(loss)
            log.info("step %d/%d (epoch %d): loss %.4f, lr %.3g", steps, total, epochs, loss, rate)
            emit(
                {
                    "event": "step",
                    "step": steps,
                    "steps_total": total,
                    "epoch": epochs,
                    "loss": loss,
                    "learning_rate": rate,
                    "tokens_per_s": windows.window_tokens / elapsed,
                }
            )
        if validation is not None and steps and not stopped:
            val_loss = trainer.evaluate(validation.data, validation.labels)
            emit({"event": "epoch", "epoch": epochs, "val_loss": val_loss, "step": steps})
    tokens = steps * windows.window_tokens
    return {
        "steps": steps,
        "epochs": epochs,
        "stopped": stopped,
        "tokens": tokens,
        "tokens_per_s": tokens / train_seconds if train_seconds else 0.0,
        "train_loss": float(np.mean(losses)) if losses else None,
        "val_loss": val_loss,
    }


def _evaluate(
    job: TrainingJob, adapter: Path, unbound: Path, texts: Sequence[str], threads: int
) -> dict[str, Any]:
    """NLL on the served model before and after; and on the training copy if one was used."""
    policy = LicensePolicy(allow_unlisted=True)  # the supervisor applied the licence policy
    with Runtime(
        job.model, context_tokens=EVAL_CONTEXT_TOKENS, threads=threads, policy=policy
    ) as rt:
        before = rt.nll(texts, special=True)
        rt.set_adapters([(rt.load_adapter(adapter), 1.0)])
        after = rt.nll(texts, special=True)
    on_copy = None
    if job.train_model != job.model:
        with Runtime(
            job.train_model, context_tokens=EVAL_CONTEXT_TOKENS, threads=threads, policy=policy
        ) as rt:
            rt.set_adapters([(rt.load_adapter(unbound), 1.0)])
            on_copy = rt.nll(texts, special=True).mean_nll
    return {
        "nll_before": before.mean_nll,
        "nll_after": after.mean_nll,
        "nll_after_on_training_copy": on_copy,
        "heldout_tokens": after.tokens,
    }

"""MLflow's system metrics (CPU, memory, disk, network, GPU) for one run, with a sampling loop fit for runs of seconds."""
from __future__ import annotations

from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

# Seconds between samples. MLflow's default (10 s) leaves a grid point of a few seconds with nothing
# and a one-minute point with six points; 2 s gives a curve for both, and a sample costs one batched
# write (~10 values; MLflow's batch logger holds writes to under a tenth of the elapsed time).
# MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL overrides it, as it does for MLflow's own runs.
SYSTEM_METRICS_INTERVAL_S = 2.0


class SystemMetrics(SystemMetricsMonitor):
    """MLflow's system metrics for one run: the monitors and ``system/...`` names of
    ``mlflow.start_run(log_system_metrics=True)`` (CPU %, memory, disk, network; GPU with nvidia-ml-py),
    with a loop fit for runs of a few seconds.

    MLflow's loop samples at the start of each interval and drops the last one: a run shorter than the
    interval gets nothing, and the first CPU figure is psutil's meaningless 0.0 for a new thread. Here
    each sample closes its interval (CPU % is over that interval), :meth:`finish` logs the last partial
    one, so every run gets at least one sample, and the run's status is not polled (the job always calls
    :meth:`finish`), which saves a store read per sample. All writes happen in this thread.
    """

    def __init__(self, run_id: str, interval_s: float = SYSTEM_METRICS_INTERVAL_S) -> None:
        super().__init__(run_id, sampling_interval=interval_s, samples_before_logging=1)

    @property
    def gpu(self) -> bool:
        """Whether GPU figures are sampled (an NVIDIA GPU with nvidia-ml-py, or ROCm)."""
        return any("GPU" in type(m).__name__ or "ROCM" in type(m).__name__ for m in self.monitors)

    def monitor(self) -> None:
        import psutil

        psutil.cpu_percent()  # psutil measures CPU % per thread, from its previous call: this thread's zero
        try:
            while True:
                stopping = self._shutdown_event.wait(float(self.sampling_interval))
                self.collect_metrics()
                self.publish_metrics(self.aggregate_metrics())
                if stopping:
                    break
            self.mlflow_logger.flush()
        except Exception as e:  # the store went away: the job's own calls fail and say so; this thread just ends
            import logging

            logging.getLogger(__name__).debug("system metrics for run %s stopped: %s", self._run_id, e)

    def stop(self) -> None:
        """Ask the thread to log the last, partial interval and end (without waiting for it)."""
        self._shutdown_event.set()

    def finish(self, timeout_s: float = 10.0) -> None:
        """Log the last, partial interval and stop; a store that stopped answering holds the job up at most ``timeout_s``."""
        self.stop()
        if self._process is not None:
            self._process.join(timeout_s)
            self._process = None

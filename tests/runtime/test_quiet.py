"""jobs/runtime/quiet.py: known chatter is dropped by logger and message, everything else stays."""

import logging
import os
import subprocess
import sys
import warnings

from jobs.runtime import quiet

CLEANER = "ray.train.v2._internal.execution.controller.placement_group_cleaner"


def test_placement_group_cleaner_poll_message_is_dropped_but_its_other_warnings_stay(caplog):
    quiet.quiet_loggers()
    logger = logging.getLogger(CLEANER)
    with caplog.at_level(logging.WARNING):
        logger.warning("Failed to query Ray Train Controller actor state. State API may be temporarily unavailable.")
        logger.warning("Detected that the Ray Train controller actor (x) is dead. Cleaning up placement group.")
    assert [r.getMessage()[:8] for r in caplog.records] == ["Detected"]


def test_py4j_info_is_dropped_and_its_errors_stay(caplog):
    quiet.quiet_loggers()
    with caplog.at_level(logging.DEBUG):
        logging.getLogger("py4j.clientserver").info("Closing down clientserver connection")
        logging.getLogger("py4j.java_gateway").error("An error occurred while calling o1.count")
    assert [r.levelname for r in caplog.records] == ["ERROR"]


def test_quiet_loggers_keeps_a_stricter_level_a_user_set():
    logging.getLogger("py4j").setLevel(logging.CRITICAL)
    try:
        quiet.quiet_loggers()
        assert logging.getLogger("py4j").level == logging.CRITICAL
    finally:
        logging.getLogger("py4j").setLevel(logging.WARNING)


def test_quiet_loggers_adds_its_filter_once():
    quiet.quiet_loggers()
    quiet.quiet_loggers()
    assert sum(isinstance(f, quiet.DropMessages) for f in logging.getLogger(CLEANER).filters) == 1


def test_child_processes_get_the_quiet_spark_log4j_file_and_warning_filters(monkeypatch):
    monkeypatch.delenv("SPARK_SUBMIT_OPTS", raising=False)
    monkeypatch.setenv("PYTHONWARNINGS", "error::ResourceWarning")
    quiet.quiet_third_parties()
    import os

    assert quiet.LOG4J_CONFIG.is_file()
    assert os.environ["SPARK_SUBMIT_OPTS"] == f"-Dlog4j2.configurationFile={quiet.LOG4J_CONFIG.as_uri()}"
    assert os.environ["PYTHONWARNINGS"] == f"error::ResourceWarning,{quiet.child_warning_filters()}"
    quiet.quiet_third_parties()  # idempotent
    assert os.environ["PYTHONWARNINGS"].count("graphviz") == 1


def test_ignored_warnings_are_only_the_listed_ones():
    quiet.quiet_warnings()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        quiet.quiet_warnings()  # catch_warnings reset the filters: install them again inside
        warnings.warn("Could not import graphviz. Rendering graph ...", UserWarning, stacklevel=1)
        warnings.warn("something else", UserWarning, stacklevel=1)
    assert [str(w.message) for w in caught] == ["something else"]


def test_a_timed_out_resource_request_is_dropped_but_other_failures_of_it_stay(caplog):
    quiet.quiet_loggers()
    logger = logging.getLogger("ray.train.v2._internal.execution.scaling_policy.autoscaling_coordinator_client")
    GetTimeoutError = type("GetTimeoutError", (Exception,), {})  # noqa: N806 (Ray's class, by name)
    with caplog.at_level(logging.WARNING):
        for error in (GetTimeoutError("Get timed out"), RuntimeError("actor died")):
            try:
                raise error
            except Exception:
                logger.warning("Failed to send resource request for train-1.", exc_info=True)
    assert [r.exc_info[1].args[0] for r in caplog.records] == ["actor died"]


def test_ray_data_shows_warnings_on_the_console_but_not_its_per_job_info_lines():
    """Ray Data configures its loggers when imported: in a fresh process, after quiet_third_parties()."""
    code = ("from jobs.runtime.quiet import quiet_third_parties; quiet_third_parties()\n"
            "import logging, ray.data\n"
            "console = [h for h in logging.getLogger('ray.data').handlers if type(h).__name__ == 'PlainRayHandler']\n"
            "print([logging.getLevelName(h.level) for h in console], logging.getLogger('ray.data').level)\n")
    env = {k: v for k, v in os.environ.items() if k != "RAY_DATA_LOGGING_CONFIG"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["['WARNING']", "10"]  # console WARNING; the logger (and its file) DEBUG

"""A training step that asks its run: a step on a Celery worker is not stopped by a signal when
its run is canceled (Dagster's Celery executor only revokes steps not yet started), so it stops
itself once the instance says its run has ended or is canceling."""

from types import SimpleNamespace

import dagster as dg
import pytest

from quadra_pipeline.defs.runs.dead_runs import StopWhenRunEnds


def test_a_step_goes_on_while_its_run_runs_and_stops_once_it_is_canceled():
    seen = {}

    @dg.op
    def train(context: dg.OpExecutionContext) -> None:
        stop = StopWhenRunEnds(context, every=0)
        stop(SimpleNamespace(batch_number=1), 10)  # the run is going: nothing happens
        context.instance.report_run_canceling(context.instance.get_run_by_id(context.run_id))
        with pytest.raises(dg.Failure) as caught:
            stop(SimpleNamespace(batch_number=7), 70)
        seen["message"] = str(caught.value)

    @dg.job
    def one_step():
        train()

    with dg.instance_for_test() as instance:
        one_step.execute_in_process(instance=instance, raise_on_error=False)
    assert "is canceling: stopping this step after batch 7" in seen["message"]


def test_it_asks_at_most_every_few_seconds(monkeypatch):
    asked = []
    context = SimpleNamespace(run_id="r", instance=SimpleNamespace(get_run_by_id=lambda run_id: asked.append(run_id)))
    stop = StopWhenRunEnds(context, every=3600)
    for batch in range(100):
        stop(SimpleNamespace(batch_number=batch), batch)
    assert asked == []  # not once within the interval: the database is not asked per batch

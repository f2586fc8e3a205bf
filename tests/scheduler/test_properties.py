"""Property tests: any delivery order, with duplicates, gives the same run."""

from __future__ import annotations

from collections import Counter

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fanflow.dsl.validate import validate_workflow
from fanflow.workflow import Workflow
from tests.scheduler.graphs import workflows
from tests.scheduler.harness import simulate

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(workflow=workflows(), data=st.data())
def test_any_order_and_duplicates_give_the_same_run(
    workflow: Workflow, data: st.DataObject
) -> None:
    assert validate_workflow(workflow) == []
    reference = simulate(workflow)
    shuffled = simulate(
        workflow,
        choose=lambda n: data.draw(st.integers(0, n - 1), label="deliver"),
        duplicate=lambda: data.draw(st.booleans(), label="duplicate"),
    )
    assert reference.status in ("succeeded", "partial-succeeded", "failed")
    assert (shuffled.status, shuffled.outputs) == (reference.status, reference.outputs)
    if reference.status != "failed":  # which of two failing branches fails first may vary
        assert shuffled.error == reference.error
    for trace in (reference, shuffled):
        repeated = [key for key, n in Counter(trace.finished_nodes).items() if n > 1]
        assert not repeated, f"nodes finished more than once: {repeated}"


@SETTINGS
@given(workflow=workflows(max_nodes=5), data=st.data())
def test_last_in_first_out_delivery(workflow: Workflow, data: st.DataObject) -> None:
    """Newest-first delivery starves early tasks as long as possible: same result."""
    assert simulate(workflow, choose=lambda n: n - 1).outputs == simulate(workflow).outputs

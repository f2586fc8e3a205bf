"""Expected outputs for the runnable cases whose `cases.jsonl` line states none.

Upstream's tests behind these cases assert events or a stream, not the run's outputs, so
their line has `expected_outputs` null, or `{}` meaning "not checked". Here each gets the
outputs Dify reports for the run, with where that value comes from. `{}` means the run
has no outputs: a failed run reports none (Dify and fanflow alike), and an End node
without `outputs` gives none. `test_expected_outputs_are_difys` runs every entry whose
source is the oracle through Dify's engine again.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

ORACLE = "Dify's engine via the oracle (graphon 0.8.0, dify_oracle.py)"


@dataclass(frozen=True)
class Expected:
    outputs: dict[str, Any]
    #: where the value comes from
    source: str
    #: why fanflow's outputs differ from Dify's, when they do (the case is marked xfail)
    difference: str | None = None


#: case id (`Case.id`) -> the outputs Dify reports for it
EXPECTED_OUTPUTS: dict[str, Expected] = {
    "29-basic_llm_chat_workflow": Expected(
        {}, f"{ORACLE}: a failed run (the LLM call errs, no error strategy) has no outputs"
    ),
    "56-iteration_contains_answer": Expected(
        {"answer": "banana\ndone", "files": []},
        f"{ORACLE}: graphon merges only the last round's Answer text into the run's outputs "
        "(engine/container_handler/builtin/iteration.py, _complete_iteration_step); the "
        'stream upstream asserts is "apple\\nbanana\\ndone"',
    ),
    "65-builder_restricted/http_text": Expected(
        {}, f"{ORACLE}: the request cannot be made (no HTTP fixture), the run fails, no outputs"
    ),
    "77-graphon_tests/graphon_loop_end_node": Expected(
        {}, f"{ORACLE}: the End node declares no outputs (`outputs: []`)"
    ),
    "78-graphon_tests/graphon_loop_nested_iteration_loop_end": Expected(
        {}, f"{ORACLE}: the End node declares no outputs (`outputs: []`)"
    ),
    "79-graphon_tests/graphon_loop_condition_error": Expected(
        {}, f"{ORACLE}: a failed run (break condition on a missing variable) has no outputs"
    ),
    "80-graphon_tests/graphon_loop_child_failure": Expected(
        {},
        f"{ORACLE}; upstream's note too: a failed run has no outputs (the inner End's "
        '"partial" is discarded)',
    ),
    "84-graphon_tests/graphon_iteration_error_terminated": Expected(
        {}, f"{ORACLE}: a failed run (the first item fails, mode terminated) has no outputs"
    ),
}

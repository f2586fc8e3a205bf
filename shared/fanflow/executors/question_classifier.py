"""The `question-classifier` node: the model picks one of `classes`; its id is the edge taken.

Outputs as Dify's: `class_name`, `class_label`, `class_id`, `usage`. Class names and the
instruction may hold `{{#node.var#}}`. See `fanflow.llm.classification` for the prompt and
how an answer maps to a class.
"""

from __future__ import annotations

from functools import partial

from fanflow.chat.memory import with_history_section
from fanflow.context import ExecutionContext, ExecutionOutcome, node_label
from fanflow.errors import NodeError
from fanflow.llm.classification import Category, categories_of, choose, classifier_messages
from fanflow.llm.client import Completion, format_failure
from fanflow.llm.invoke import ModelConfig, invoke
from fanflow.messages import NodeTask
from fanflow.variables import render, resolve_or_none, to_text


async def run_question_classifier(task: NodeTask, context: ExecutionContext) -> ExecutionOutcome:
    label = node_label(task)
    data = task.data
    categories = categories_of(data.get("classes"), partial(render, lookup=task.lookup))
    if not categories:
        raise NodeError(f"{label}: the node has no classes", error_type="QuestionClassifierError")
    selector = data.get("query_variable_selector")
    query = (
        to_text(resolve_or_none(task.lookup, [str(part) for part in selector]))
        if isinstance(selector, list) and len(selector) >= 2
        else ""
    )
    instruction = render(str(data.get("instruction") or ""), task.lookup)
    chat = ModelConfig.of(task).mode != "completion"
    messages = with_history_section(
        classifier_messages(query, categories, instruction, chat=chat), task.history
    )

    def check(completion: Completion) -> Category:
        chosen = choose(categories, completion.text)
        if chosen is None:
            raise format_failure(
                f"{label}: the classifier's reply holds no JSON object: {completion.text[:80]!r}"
            )
        return chosen

    completion, chosen = await invoke(task, context, messages, check=check)
    assert chosen is not None  # check() returned it
    outputs = {
        "class_name": chosen.name,
        "class_label": chosen.label,
        "class_id": chosen.id,
        "usage": completion.usage.as_output(),
    }
    return ExecutionOutcome(
        outputs=outputs, edge_handle=chosen.id, total_tokens=completion.usage.total_tokens
    )

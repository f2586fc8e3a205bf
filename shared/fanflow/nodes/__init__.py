"""Pure node evaluators: data mapping + `Lookup` in, plain JSON-able values out.

No I/O and no clock; a node failure raises `fanflow.errors.NodeError`.
"""

from fanflow.nodes.aggregator import aggregate
from fanflow.nodes.assigner import plan_assignments
from fanflow.nodes.conditions import evaluate_break, evaluate_cases, evaluate_condition
from fanflow.nodes.defaults import coerce_default
from fanflow.nodes.list_operator import operate_list
from fanflow.nodes.outputs import CodeLimits, check_code_outputs
from fanflow.nodes.start import prepare_inputs
from fanflow.nodes.template import render_template, template_variables

__all__ = [
    "CodeLimits",
    "aggregate",
    "check_code_outputs",
    "coerce_default",
    "evaluate_break",
    "evaluate_cases",
    "evaluate_condition",
    "operate_list",
    "plan_assignments",
    "prepare_inputs",
    "render_template",
    "template_variables",
]

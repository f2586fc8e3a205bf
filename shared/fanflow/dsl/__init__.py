"""The Dify DSL: load an export into a `Workflow`, validate it, and say what each node reads."""

from fanflow.dsl.inputs import node_selectors
from fanflow.dsl.load import check_file, load_workflow, parse_workflow
from fanflow.dsl.validate import validate_workflow

__all__ = ["check_file", "load_workflow", "node_selectors", "parse_workflow", "validate_workflow"]

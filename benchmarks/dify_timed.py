"""Runs one workflow with Dify's engine (the kit's oracle) and times the run alone.

Runs in the oracle venv (`make oracle`), importing nothing from fanflow:

    ORACLE_PY benchmarks/dify_timed.py ORACLE_SCRIPT WORKFLOW.yml INPUTS.json LLM_BASE_URL

Prints {"seconds", "status", "outputs_len", "error"}; the interpreter and graphon imports
are outside the timing, as `fanflow run`'s start is outside its `elapsed_time`.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path


def main() -> None:
    script, workflow, inputs_file, llm_base_url = sys.argv[1:5]
    sys.path.insert(0, str(Path(script).parent))
    import dify_oracle

    settings = dify_oracle.OracleSettings(
        llm_base_url=llm_base_url, max_steps=10_000_000, max_run_s=1200.0
    )
    text = Path(workflow).read_text()
    inputs = json.loads(Path(inputs_file).read_text())
    started = time.perf_counter()
    result = dify_oracle.run_workflow(text, inputs=inputs, settings=settings)
    seconds = time.perf_counter() - started
    outputs = result.get("outputs") or {}
    first = next(iter(outputs.values()), None)
    print(
        json.dumps(
            {
                "seconds": seconds,
                "status": result["status"],
                "error": result["error"],
                "outputs_len": len(first) if isinstance(first, list) else None,
            }
        )
    )


if __name__ == "__main__":
    main()

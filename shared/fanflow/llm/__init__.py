"""LLM calls over OpenAI-compatible chat completions: providers, requests, prompts, replies.

The executors of `llm`, `parameter-extractor` and `question-classifier` build on this
package; services build a `Providers` from their settings and pass it in the
`ExecutionContext` (with the pooled HTTP client), and may check a workflow's LLM nodes
against it up front with `check_llm_config`.
"""

from fanflow.llm.providers import (
    Endpoint,
    ProviderNotConfigured,
    Providers,
    ProvidersInvalid,
    check_llm_config,
    provider_name,
    providers_from_environment,
)
from fanflow.registry import LLM_NODE_TYPES

__all__ = [
    "LLM_NODE_TYPES",
    "Endpoint",
    "ProviderNotConfigured",
    "Providers",
    "ProvidersInvalid",
    "check_llm_config",
    "provider_name",
    "providers_from_environment",
]

"""Chat fixtures: the mock LLM factory of the LLM tests, and the chatflows under test."""

from __future__ import annotations

from pathlib import Path

from tests.llm.conftest import MockFactory, MockLLM, mock_llm

DATA = Path(__file__).resolve().parent / "data"
MEMORY_CHAT = DATA / "memory_chat.yml"
CLASSIFY_CHAT = DATA / "classify_chat.yml"

__all__ = ["CLASSIFY_CHAT", "DATA", "MEMORY_CHAT", "MockFactory", "MockLLM", "mock_llm"]

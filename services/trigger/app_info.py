"""Dify's Service API for an app's metadata: `GET /v1/parameters`, `/v1/info`, `/v1/meta`
and `/v1/site`, for workflow and chatflow apps alike, read from the imported DSL.

The start node's variables become `user_input_form` (each under its type, as Dify's old
structure has it); `features` (opening statement, suggested questions, file upload, ...)
is passed through with Dify's defaults for what the export leaves out.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import lru_cache
from typing import Any

import yaml
from fanflow_services.trigger.api import AppDep, TriggerDep
from fastapi import APIRouter

from fanflow.store import AppRecord

router = APIRouter(prefix="/v1", tags=["Service API: apps"])

#: Dify's upload limits (MB; files per run) when the export names none
SYSTEM_PARAMETERS = {
    "file_size_limit": 15,
    "image_file_size_limit": 10,
    "audio_file_size_limit": 50,
    "video_file_size_limit": 100,
    "workflow_file_upload_limit": 10,
}
_IMAGE_UPLOAD = {
    "enabled": False,
    "number_limits": 3,
    "detail": "high",
    "transfer_methods": ["remote_url", "local_file"],
}
_TOGGLES = (
    "suggested_questions_after_answer",
    "speech_to_text",
    "retriever_resource",
    "annotation_reply",
    "more_like_this",
    "sensitive_word_avoidance",
)


@lru_cache(maxsize=256)
def _document(app_id: str, dsl: str) -> Mapping[str, Any]:
    # an app's DSL never changes after import: parse it once per app
    loaded = yaml.safe_load(dsl)
    return loaded if isinstance(loaded, Mapping) else {}


def _section(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def document_of(app: AppRecord) -> Mapping[str, Any]:
    return _document(app.id, app.dsl)


def features_of(app: AppRecord) -> Mapping[str, Any]:
    """The export's `workflow.features` (empty when it has none)."""
    return _section(_section(document_of(app).get("workflow")).get("features"))


def variable_descriptions(app: AppRecord) -> dict[str, str]:
    """Conversation variable name -> its description in the export."""
    declared = _section(document_of(app).get("workflow")).get("conversation_variables") or []
    return {
        str(v.get("name")): str(v.get("description") or "")
        for v in declared
        if isinstance(v, Mapping)
    }


def _start_variables(app: AppRecord) -> list[Mapping[str, Any]]:
    graph = _section(_section(document_of(app).get("workflow")).get("graph"))
    for node in graph.get("nodes") or []:
        data = _section(_section(node).get("data"))
        if data.get("type") == "start":
            return [v for v in data.get("variables") or [] if isinstance(v, Mapping)]
    return []


def user_input_form(app: AppRecord) -> list[dict[str, Any]]:
    form = []
    for variable in _start_variables(app):
        kind = str(variable.get("type") or "text-input")
        entry = {
            "label": variable.get("label") or variable.get("variable"),
            "variable": variable.get("variable"),
            "required": bool(variable.get("required", False)),
            "default": variable.get("default") or "",
            **{k: v for k, v in variable.items() if k not in ("label", "variable", "required")},
        }
        entry.setdefault("options", [])
        form.append({kind: entry})
    return form


def parameters(app: AppRecord) -> dict[str, Any]:
    """`AppParametersResponse`."""
    features = features_of(app)
    file_upload = dict(_section(features.get("file_upload")))
    file_upload["image"] = {**_IMAGE_UPLOAD, **_section(file_upload.get("image"))}
    tts = _section(features.get("text_to_speech"))
    limits = _section(file_upload.get("fileUploadConfig"))
    return {
        "opening_statement": features.get("opening_statement") or "",
        "suggested_questions": list(features.get("suggested_questions") or []),
        **{
            name: {"enabled": bool(_section(features.get(name)).get("enabled"))}
            for name in _TOGGLES
        },
        "text_to_speech": {
            "enabled": bool(tts.get("enabled")),
            "voice": str(tts.get("voice") or ""),
            "language": str(tts.get("language") or ""),
            "autoPlay": str(tts.get("autoPlay") or "disabled"),
        },
        "user_input_form": user_input_form(app),
        "file_upload": file_upload,
        "system_parameters": {
            name: int(limits.get(name) or default) for name, default in SYSTEM_PARAMETERS.items()
        },
    }


def _app_section(app: AppRecord) -> Mapping[str, Any]:
    return _section(document_of(app).get("app"))


@router.get("/parameters", summary="Get App Parameters")
async def get_parameters(app: AppDep, trigger: TriggerDep) -> dict[str, Any]:
    return parameters(app)


@router.get("/info", summary="Get App Info")
async def get_info(app: AppDep, trigger: TriggerDep) -> dict[str, Any]:
    """`AppInfoResponse`."""
    section = _app_section(app)
    return {
        "name": app.name,
        "description": str(section.get("description") or ""),
        "tags": [],
        "mode": app.mode,
        "author_name": "",
    }


@router.get("/meta", summary="Get App Meta")
async def get_meta(app: AppDep, trigger: TriggerDep) -> dict[str, Any]:
    """`AppMetaResponse`: fanflow runs no tool nodes, so no tool has an icon."""
    return {"tool_icons": {}}


@router.get("/site", summary="Get App WebApp Settings")
async def get_site(app: AppDep, trigger: TriggerDep) -> dict[str, Any]:
    """`WebAppSettingsResponse`, from the export's `app` section (fanflow serves no web app)."""
    section = _app_section(app)
    icon_type = str(section.get("icon_type") or "emoji")
    return {
        "title": app.name,
        "chat_color_theme": "",
        "chat_color_theme_inverted": False,
        "icon_type": icon_type,
        "icon": str(section.get("icon") or ""),
        "icon_background": str(section.get("icon_background") or ""),
        "icon_url": None,
        "description": str(section.get("description") or ""),
        "copyright": "",
        "privacy_policy": "",
        "input_placeholder": None,
        "custom_disclaimer": "",
        "default_language": "en-US",
        "show_workflow_steps": True,
        "use_icon_as_answer_icon": bool(section.get("use_icon_as_answer_icon", False)),
    }

"""What every page shares: the API client (from INCOMEOPS_API_URL) and friendly error messages."""
from __future__ import annotations

import os

import streamlit as st

from incomeops.client import ApiClient, ApiRejected, ApiUnavailable
from incomeops.config import Settings

UNKNOWN = "Unknown"
TIMEOUT = float(os.environ.get("INCOMEOPS_UI_TIMEOUT", "10"))


@st.cache_resource
def client(url: str) -> ApiClient:
    return ApiClient(url, timeout=TIMEOUT)


def api() -> ApiClient:
    "The client of the API named by INCOMEOPS_API_URL (read on every run, so a test or operator can point it elsewhere)."
    return client(os.environ.get("INCOMEOPS_API_URL") or Settings.model_fields["api_url"].default)


@st.cache_data(ttl=30, show_spinner=False)
def model_info(url: str) -> dict:
    return client(url).model()


def current_model() -> dict | None:
    "The served model's description, or None after showing why it is not available."
    try: return model_info(api().url)
    except ApiUnavailable as e: st.error(f"The prediction service is not available right now: {e}. Please try again in a moment.")
    except ApiRejected as e: st.error(f"The prediction service refused to describe its model: {e.detail}")
    return None


def show_rejection(e: ApiRejected, schema: dict) -> None:
    "The service's objections, in the form's own words."
    lines = []
    for p in e.problems or [{"field": "", "problem": e.detail}]:
        name = p["field"].replace("-", "_")
        label = schema.get(name, {}).get("label", p["field"])
        lines.append(f"- **{label}**: {p['problem']}")
    st.error("Some answers need a change:\n" + "\n".join(lines))

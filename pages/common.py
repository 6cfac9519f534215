"""What every page shares: the API client (INCOMEOPS_API_URL, and the prediction key INCOMEOPS_PREDICT_API_KEY if the
service asks for one) and friendly error messages."""
from __future__ import annotations

import os

import streamlit as st

from incomeops.client import ApiClient, ApiRejected, ApiUnavailable, service_url

UNKNOWN = "Unknown"
TIMEOUT = float(os.environ.get("INCOMEOPS_UI_TIMEOUT", "10"))
KEY_VARIABLE = "INCOMEOPS_PREDICT_API_KEY"


@st.cache_resource
def client(url: str, key: str | None) -> ApiClient:
    return ApiClient(url, api_key=key, timeout=TIMEOUT)


def api_url() -> str: return service_url()


def form_key() -> str | None:
    "The prediction key this form sends (read on every run, like the URL); None if it has none."
    return os.environ.get(KEY_VARIABLE, "").strip() or None


def api() -> ApiClient:
    "The client of the API named by INCOMEOPS_API_URL, sending the form's key (read on every run, so a test or operator can change them)."
    return client(api_url(), form_key())


def key_message() -> str:
    "What the operator must do when the service refuses the form's key (the person using the form can only pass it on)."
    problem = ("this form sends no key" if form_key() is None else
               f"the key this form sends (from {KEY_VARIABLE}) is not the one the service expects")
    return (f"The prediction service asks for a key, and {problem}. Nothing was scored. Whoever runs this form: set "
            f"`{KEY_VARIABLE}` in the form's environment to the service's prediction key (the value of `{KEY_VARIABLE}` "
            "on the service), then restart the form.")


def refusal(e: ApiRejected, what: str) -> None:
    "Show why the service refused: the key (in words for the operator), or its own reason for `what`."
    if e.key_refused: st.error(key_message())
    else: st.error(f"The prediction service refused to {what}: {e.detail}")


@st.cache_data(ttl=30, show_spinner=False)
def model_info(url: str, key: str | None) -> dict:
    return client(url, key).model()


def current_model() -> dict | None:
    "The served model's description, or None after showing why it is not available."
    try: return model_info(api_url(), form_key())
    except ApiUnavailable as e: st.error(f"The prediction service is not available right now: {e}. Please try again in a moment.")
    except ApiRejected as e: refusal(e, "describe its model")
    return None


def show_rejection(e: ApiRejected, schema: dict) -> None:
    "The service's objections, in the form's own words (or, for a refused key, what the operator must do)."
    if e.key_refused:
        st.error(key_message())
        return
    lines = []
    for p in e.problems or [{"field": "", "problem": e.detail}]:
        name = p["field"].replace("-", "_")
        label = schema.get(name, {}).get("label", p["field"])
        lines.append(f"- **{label}**: {p['problem']}")
    st.error("Some answers need a change:\n" + "\n".join(lines))

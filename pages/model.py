"""The model in service: metrics, model card, slices and plots, from the API."""
from __future__ import annotations

import pandas as pd
import streamlit as st

from incomeops.client import ApiRejected, ApiUnavailable
from pages.common import api, api_url, client, current_model, form_key, refusal

METRIC_NAMES = {"roc_auc": "ROC AUC", "accuracy": "Accuracy", "f1": "F1", "precision": "Precision", "recall": "Recall",
                "log_loss": "Log loss", "brier": "Brier score"}


@st.cache_data(ttl=300, show_spinner=False)
def plot(url: str, key: str | None, version: str, name: str) -> bytes:
    "One evaluation plot of the served version, fetched with the form's key (a browser following a link would have none)."
    return client(url, key).fetch(f"/model/plots/{name}")


def model_page() -> None:
    st.title("The model in service")
    model = current_model()
    if model is None: return
    st.markdown(f"**{model['name']}** version **{model['version']}** ({model.get('family') or 'unknown family'}), "
                f"trained on dataset version `{model.get('dataset_version')}`; decision threshold {model['threshold']:.3f}.")
    metrics = model.get("test_metrics") or {}
    if metrics:
        shown = {k: metrics[k] for k in ("roc_auc", "accuracy", "f1", "precision", "recall", "log_loss", "brier") if k in metrics}
        cols = st.columns(len(shown))
        for col, (k, v) in zip(cols, shown.items()): col.metric(METRIC_NAMES[k], f"{v:.4f}")
    try: card = api().request("GET", "/model/card")
    except ApiRejected as e:
        if e.key_refused:
            refusal(e, "show the model card")
            return
        card = None
    except ApiUnavailable: card = None
    if card and card.get("markdown"):
        with st.expander("Model card", expanded=True): st.markdown(card["markdown"])
        if card.get("slices"):
            st.subheader("Performance by group")
            st.dataframe(pd.DataFrame(card["slices"]), hide_index=True, width="stretch")
        for name in card.get("plots", []):
            try: st.image(plot(api_url(), form_key(), str(model["version"]), name), caption=name.removesuffix(".png").replace("_", " "))
            except (ApiUnavailable, ApiRejected) as e: st.warning(f"The plot {name} is not available: {e}")
    else: st.info("The model card is not available for this model.")


model_page()

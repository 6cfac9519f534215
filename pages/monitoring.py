"""Monitoring: prediction volume, class balance, live performance, drift and retraining."""
from __future__ import annotations

import altair as alt
import pandas as pd
import streamlit as st

from incomeops.client import ApiRejected, ApiUnavailable
from pages.common import api


def monitoring_page() -> None:
    st.title("Monitoring")
    try: summary = api().request("GET", "/monitoring/summary")
    except ApiUnavailable as e:
        st.error(f"The prediction service is not available right now: {e}.")
        return
    except ApiRejected as e:
        st.info(f"Monitoring data is not available yet: {e.detail}")
        return
    cols = st.columns(3)
    cols[0].metric("Predictions logged", f"{summary.get('predictions', 0):,}")
    cols[1].metric("With a true label", f"{summary.get('labelled', 0):,}")
    cols[2].metric("Model version", summary.get("model_version") or "-")
    volume = pd.DataFrame(summary.get("volume", []))
    if not volume.empty:
        st.subheader("Recent predictions")
        st.altair_chart(alt.Chart(volume).mark_bar().encode(x=alt.X("hour:T", title=None), y=alt.Y("count:Q", title="predictions"),
                                                            color=alt.Color("label:N", title="predicted")), width="stretch")
    if summary.get("metrics"):
        st.subheader("Performance on labelled predictions")
        st.dataframe(pd.DataFrame([summary["metrics"]]), hide_index=True)
    else: st.info("Performance appears here once true incomes are reported through /feedback.")
    for key, title in (("drift", "Data drift"), ("retraining", "Retraining history")):
        if summary.get(key) is not None:
            st.subheader(title)
            st.dataframe(pd.DataFrame(summary[key]), hide_index=True, width="stretch")


monitoring_page()

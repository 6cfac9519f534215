"""Monitoring: prediction volume, live performance, the last check (drift, alarms), alerts and retrainings."""
from __future__ import annotations

import altair as alt
import pandas as pd
import streamlit as st

from incomeops.client import ApiRejected, ApiUnavailable
from pages.common import api, refusal

ALARM_WORDS = {"drift": "The people asked about no longer look like the training data",
               "input_drift": "One input changed sharply (more often a broken feed upstream, a unit or a mapping, than a new world)",
               "score_drift": "The model's scores are spread differently than in training",
               "positive_share": "The share of '>50K' answers moved",
               "performance": "The model is less accurate than when it was trained",
               "data_quality": "Some inputs look broken (missing or stuck on one value)",
               "retrain_failed": "A retraining failed; the model in service did not change",
               "promotion": "A retrained model replaced the one in service"}


def show_volume(summary: dict) -> None:
    cols = st.columns(3)
    cols[0].metric("Predictions logged", f"{summary.get('predictions', 0):,}")
    cols[1].metric("With a true label", f"{summary.get('labelled', 0):,}")
    cols[2].metric("Model version", summary.get("model_version") or "-")
    volume = pd.DataFrame(summary.get("volume", []))
    if not volume.empty:
        st.subheader("Recent predictions")
        st.altair_chart(alt.Chart(volume).mark_bar().encode(x=alt.X("hour:T", title=None), y=alt.Y("count:Q", title="predictions"),
                                                            color=alt.Color("label:N", title="predicted")), width="stretch")


def show_check(check: dict, important: list[str]) -> None:
    st.subheader("Last check")
    st.caption(f"Checked at {check['checked_at'][:19].replace('T', ' ')} UTC on {check['window_rows']:,} recent predictions "
               f"of version {check['champion'].get('version')}, {check['labelled_rows']:,} of them with a true label.")
    for alarm in check.get("alarms", []):
        st.error(f"**{ALARM_WORDS.get(alarm['kind'], alarm['kind'])}.** {alarm['message']} (rule: {rule_named(alarm)})")
    if not check.get("alarms"): st.success("No alarm: the inputs look like the training data and the answers are as good as expected.")
    if retraining := check.get("retraining"):
        st.info(f"A retraining started (job {retraining['job_id']})." if retraining["started"] else f"No retraining: {retraining['why']}.")
    perf, test = check.get("performance"), check["champion"].get("test", {})
    cols = st.columns(3)
    if perf:
        cols[0].metric("Live ROC AUC", f"{perf['roc_auc']:.3f}", f"{perf['roc_auc'] - test['roc_auc']:+.3f} vs test" if "roc_auc" in test else None,
                       help=f"95% interval {perf['roc_auc_ci'][0]:.3f} to {perf['roc_auc_ci'][1]:.3f}, on {perf['n']:,} labelled predictions")
        cols[1].metric("Live accuracy", f"{perf['accuracy']:.3f}", f"{perf['accuracy'] - test['accuracy']:+.3f} vs test" if "accuracy" in test else None,
                       help=f"95% interval {perf['accuracy_ci'][0]:.3f} to {perf['accuracy_ci'][1]:.3f}")
    else: cols[0].metric("Live ROC AUC", "-", help="Needs more predictions with a true label")
    if check.get("estimated_accuracy") is not None:
        cols[2].metric("Expected accuracy (no labels)", f"{check['estimated_accuracy']:.3f}",
                       help=check.get("estimate_caveat") or "What the model expects from its own confidence, if it is calibrated")
        if check.get("estimate_trusted") is False: cols[2].caption("Not trusted: an input drifted, and this figure assumes the model is still calibrated.")
    if check.get("drift"): show_drift(check, important)


def rule_named(rule: dict) -> str:
    "Which rule fired, and on which inputs: 'input_drift on age'."
    inputs = rule.get("inputs") or []
    return rule["kind"] + (f" on {', '.join(inputs)}" if inputs else "")


def marked(feature: str, important: list[str]) -> str:
    return f"★ {feature}" if feature in important else feature


def show_drift(check: dict, important: list[str]) -> None:
    "The last check's drift per input, the inputs that matter most to the model marked with a star."
    drift = pd.DataFrame(check["drift"])
    drift = drift.assign(input=[marked(f, important) for f in drift["feature"]], weight=drift.get("weight"))
    st.markdown(f"**Drift of each input** (population stability index; above the red line the input has drifted; "
                f"{drift['drifted'].sum()} of {len(drift)} have). ★ marks the inputs that matter most to the model.")
    bars = alt.Chart(drift).mark_bar().encode(x=alt.X("psi:Q", title="PSI"), y=alt.Y("input:N", sort="-x", title=None),
                                              color=alt.condition("datum.drifted", alt.value("#d62728"), alt.value("#4c78a8")),
                                              tooltip=["feature", "psi", "weight", "drifted"])
    st.altair_chart(bars + alt.Chart(pd.DataFrame({"x": [0.2]})).mark_rule(color="red").encode(x="x:Q"), width="stretch")
    st.download_button("Download the full drift report (Evidently, HTML)", drift_report, "incomeops-drift-report.html", "text/html",
                       on_click="ignore", key="drift_report")


def show_history(summary: dict) -> None:
    "Each input's drift over the recent checks, and the rules each check fired."
    history, important = pd.DataFrame(summary.get("drift_history", [])), summary.get("important_inputs", [])
    if history.empty or history["checked_at"].nunique() < 2: return
    st.subheader("Drift over time")
    ever = sorted(history.loc[history["drifted"], "feature"].unique())
    shown = st.multiselect("Inputs", sorted(history["feature"].unique()), default=sorted(set(important) | set(ever)) or None,
                           format_func=lambda f: marked(f, important), key="drift_inputs",
                           help="★ the inputs that matter most to the model; by default these and every input that drifted")
    history = history[history["feature"].isin(shown)].assign(input=lambda h: [marked(f, important) for f in h["feature"]],
                                                             fired=lambda h: h["rules"].map(", ".join))
    lines = alt.Chart(history).mark_line(point=True).encode(
        x=alt.X("checked_at:T", title=None, axis=alt.Axis(format="%b %d %H:%M:%S", labelAngle=0, tickCount=6)),   # no fractions of a second y=alt.Y("psi:Q", title="PSI", scale=alt.Scale(type="symlog", constant=0.1)),
        color=alt.Color("input:N", title="input"), tooltip=["feature", "checked_at", "psi", "drifted", "fired"])
    st.altair_chart(lines + alt.Chart(pd.DataFrame({"y": [0.2]})).mark_rule(color="red", strokeDash=[4, 4]).encode(y="y:Q"), width="stretch")
    checks = pd.DataFrame(summary.get("checks", []))
    st.dataframe(pd.DataFrame({"checked at (UTC)": checks["checked_at"].str[:19].str.replace("T", " "), "rows": checks["window_rows"],
                               "labelled": checks["labelled_rows"],
                               "rules that fired": ["; ".join(rule_named(r) for r in rules) or "none" for rules in checks["rules"]],
                               "retraining": checks["retraining_started"].map({True: "started", False: "-"})}).iloc[::-1],
                 hide_index=True, width="stretch")


def drift_report() -> bytes:
    "The latest drift report, fetched when the button is pressed, with the form's key (a link would have none)."
    try: return api().fetch("/monitoring/report")
    except (ApiUnavailable, ApiRejected) as e: return f"<p>The drift report is not available: {e}</p>".encode()


def monitoring_page() -> None:
    st.title("Monitoring")
    try: summary = api().request("GET", "/monitoring/summary")
    except ApiUnavailable as e:
        st.error(f"The prediction service is not available right now: {e}.")
        return
    except ApiRejected as e:
        if e.key_refused: refusal(e, "show monitoring")
        else: st.info(f"Monitoring data is not available yet: {e.detail}")
        return
    show_volume(summary)
    if summary.get("last_check"):
        show_check(summary["last_check"], summary.get("important_inputs", []))
        show_history(summary)
    elif summary.get("metrics"):
        st.subheader("Performance on labelled predictions")
        st.dataframe(pd.DataFrame([summary["metrics"]]), hide_index=True)
    else: st.info("No monitoring check has run yet. Checks run on the service's schedule, with `incomeops monitor`, or POST /jobs/monitor.")
    if summary.get("alerts"):
        st.subheader("Alerts")
        alerts = pd.DataFrame(summary["alerts"])[["created_at", "kind", "message"]]
        st.dataframe(alerts.assign(created_at=alerts["created_at"].str[:19].str.replace("T", " ")), hide_index=True, width="stretch")
    if summary.get("retraining"):
        st.subheader("Retraining history")
        st.dataframe(pd.DataFrame(summary["retraining"]), hide_index=True, width="stretch")


monitoring_page()

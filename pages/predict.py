"""The prediction form: one person, the answer, and why."""
from __future__ import annotations

import altair as alt
import pandas as pd
import streamlit as st

from incomeops.client import ApiRejected, ApiUnavailable, api_scorer, explain
from pages.common import UNKNOWN, api, current_model, show_rejection


def person_form(schema: dict) -> dict | None:
    "The inputs as a request body when the form is submitted, else None."
    with st.form("person"):
        left, right = st.columns(2)
        person = {}
        for i, (name, spec) in enumerate((n, s) for n, s in schema.items() if n != "education_num"):
            column = left if i % 2 == 0 else right
            if spec["type"] == "integer":
                person[name] = column.number_input(spec["label"], min_value=spec["minimum"], max_value=spec["maximum"],
                                                   value=spec["default"], step=1, help=spec["help"], key=f"in_{name}")
            else:
                options = spec["categories"] + ([UNKNOWN] if spec["nullable"] else [])
                choice = column.selectbox(spec["label"], options, index=options.index(spec["default"]), help=spec["help"], key=f"in_{name}")
                person[name] = None if choice == UNKNOWN else choice
        submitted = st.form_submit_button("Predict", type="primary")
    return person if submitted else None


def probability_chart(p: float, threshold: float) -> alt.LayerChart:
    "A bar from 0 to 1 filled to the probability, with the decision threshold marked."
    bar = alt.Chart(pd.DataFrame({"p": [p]})).mark_bar(size=28, color="#2e7d32" if p >= threshold else "#1565c0").encode(
        x=alt.X("p:Q", scale=alt.Scale(domain=[0, 1]), title="Probability of earning more than 50K", axis=alt.Axis(format="%")))
    rule = alt.Chart(pd.DataFrame({"t": [threshold]})).mark_rule(color="#212121", strokeWidth=3).encode(x="t:Q")
    label = alt.Chart(pd.DataFrame({"t": [threshold], "text": [f"decision threshold {threshold:.0%}"]})).mark_text(
        dy=-22, align="left", dx=4).encode(x="t:Q", text="text:N")
    return (bar + rule + label).properties(height=70)


def effects_chart(why: pd.DataFrame) -> alt.Chart:
    data = why.assign(direction=lambda d: d["effect"].map(lambda e: "pushed up" if e > 0 else "pushed down"))
    return alt.Chart(data).mark_bar().encode(
        y=alt.Y("input:N", sort=None, title=None), x=alt.X("effect:Q", title="Change in probability", axis=alt.Axis(format="+%")),
        color=alt.Color("direction:N", scale=alt.Scale(domain=["pushed up", "pushed down"], range=["#2e7d32", "#c62828"]), title=None),
        tooltip=["input", "value", "typical", alt.Tooltip("effect:Q", format="+.1%")]).properties(height=alt.Step(32))


def show_answer(answer: dict, why: pd.DataFrame) -> None:
    p, threshold = answer["probability"], answer["threshold"]
    verdict = "likely earns **more than 50K** USD a year" if answer["label"] == ">50K" else "likely earns **50K USD a year or less**"
    st.subheader("Result")
    st.markdown(f"This person {verdict}: the model puts the probability of more than 50K at **{p:.0%}** "
                f"(it answers \"more than 50K\" from {threshold:.0%}).")
    st.altair_chart(probability_chart(p, threshold), width="stretch")
    st.caption(f"Model {answer['model_name']} version {answer['model_version']} · prediction id {answer['prediction_id']}")
    st.subheader("Why?")
    if why.empty:
        st.write("Every answer is the most common one, so there is nothing that sets this person apart from the typical case.")
        return
    sentences = [f"- **{r.input}** ({r.value} instead of the typical {r.typical}) {'raised' if r.effect > 0 else 'lowered'} "
                 f"the probability by {abs(r.effect):.0%}." for r in why.head(3).itertuples()]
    st.markdown("\n".join(sentences))
    st.altair_chart(effects_chart(why), width="stretch")
    st.caption("Each bar compares this person with the same person given the typical value for that one answer.")


def predict_page() -> None:
    st.title("Will this person earn more than 50K USD a year?")
    st.write("Describe a person the way the 1994 US census did. Leave an answer as *Unknown* if you do not know it.")
    model = current_model()
    if model is None: return
    schema = model["input_schema"]
    person = person_form(schema)
    if person is None: return
    try:
        answer = api().predict(person)
        _, why = explain(person, api_scorer(api()))
    except ApiRejected as e: show_rejection(e, schema)
    except ApiUnavailable as e: st.error(f"The prediction service did not answer: {e}. Please try again in a moment.")
    else: show_answer(answer, why)


predict_page()

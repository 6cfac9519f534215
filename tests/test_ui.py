"""The Streamlit pages, run headless by `streamlit.testing.v1.AppTest` against the live test API (uvicorn)."""
import re

import httpx
import pytest
from streamlit.testing.v1 import AppTest

from api_support import ApiServer
from conftest import REPO
from incomeops.cleaning import MODEL_INPUTS

pytestmark = pytest.mark.timeout(600)


def page(name: str, api_url: str, monkeypatch, key: str | None = None) -> AppTest:
    "Page `name` run against the API at `api_url`, with the prediction key `key` in the form's environment (or none)."
    monkeypatch.setenv("INCOMEOPS_API_URL", api_url)
    if key: monkeypatch.setenv("INCOMEOPS_PREDICT_API_KEY", key)
    else: monkeypatch.delenv("INCOMEOPS_PREDICT_API_KEY", raising=False)
    return AppTest.from_file(str(REPO / "pages" / f"{name}.py"), default_timeout=60).run()


def texts(at: AppTest) -> str:
    return "\n".join([m.value for m in at.markdown] + [e.value for e in at.error] + [i.value for i in at.info] + [w.value for w in at.warning])


def test_the_form_is_built_from_the_api_schema_and_shows_a_prediction_with_reasons(api, monkeypatch):
    at = page("predict", api.url, monkeypatch)
    assert not at.exception
    schema = httpx.get(f"{api.url}/model").json()["input_schema"]
    sex = at.selectbox(key="in_sex")
    assert sex.options == schema["sex"]["categories"] + ["Unknown"] and sex.value == schema["sex"]["default"]
    assert at.number_input(key="in_hours_per_week").max == 99 and "education_num" not in [w.key for w in at.number_input]
    asked = {w.key.removeprefix("in_") for w in [*at.number_input, *at.selectbox]}
    assert asked == {*MODEL_INPUTS, "education"} - {"education_num"}          # every model input is sent (education for its rank)
    at.number_input(key="in_age").set_value(52)
    at.selectbox(key="in_education").set_value("Doctorate")
    at.number_input(key="in_hours_per_week").set_value(60)
    at.selectbox(key="in_occupation").set_value("Unknown")
    at.button[0].click().run()
    assert not at.exception and not at.error
    shown = texts(at)
    person = {k: v["default"] for k, v in schema.items() if k != "education_num"}
    person.update(age=52, education="Doctorate", hours_per_week=60, occupation=None)
    expected = httpx.post(f"{api.url}/predict", json=person).json()
    assert f"at **{expected['probability']:.0%}**" in shown
    assert ("more than 50K** USD a year" in shown) == (expected["label"] == ">50K")
    assert re.search(r"Highest education\*\* \(Doctorate instead of the typical HS-grad\) (raised|lowered)", shown)
    assert any(f"version {expected['model_version']}" in c.value for c in at.caption)


def test_an_unreachable_api_gets_a_friendly_message(monkeypatch):
    at = page("predict", "http://127.0.0.1:9", monkeypatch)
    assert not at.exception
    assert "not available right now" in at.error[0].value and "cannot be reached" in at.error[0].value
    for name in ("model", "monitoring"):
        other = page(name, "http://127.0.0.1:9", monkeypatch)
        assert not other.exception and "not available right now" in other.error[0].value


def test_the_form_sends_the_prediction_key_and_explains_a_missing_or_wrong_one(champion_project, monkeypatch):
    key = "shared-with-the-form"
    with ApiServer(champion_project[0], env={"INCOMEOPS_PREDICT_API_KEY": key}) as server:
        at = page("predict", server.url, monkeypatch, key=key)
        at.button[0].click().run()
        assert not at.exception and not at.error
        assert "the model puts the probability of more than 50K at" in texts(at)
        for sent, words in ((None, "this form sends no key"), ("not-the-key", "is not the one the service expects")):
            at = page("predict", server.url, monkeypatch, key=sent)
            if not at.error: at.button[0].click().run()                     # the first call that needs the key
            assert not at.exception
            message = at.error[0].value
            assert words in message and "INCOMEOPS_PREDICT_API_KEY" in message and "restart the form" in message
            assert "probability" not in texts(at)


def test_batch_upload_validates_rows_scores_and_offers_the_results(api, monkeypatch, mirror):
    at = page("batch", api.url, monkeypatch)
    rows = (mirror / "adult.test").read_text().splitlines()[1:301]
    rows[4] = rows[4].replace(rows[4].split(",")[0], "150", 1)                 # age 150 on file line 5
    at.file_uploader[0].set_value(("people.csv", ("\n".join(rows) + "\n").encode(), "text/csv")).run()
    assert not at.exception
    problems = at.dataframe[0].value
    assert problems[["line", "field"]].values.tolist() == [[5, "age"]]
    assert "299 row(s) ready to score" in texts(at)
    at.button[0].click().run()
    assert not at.exception and not at.error
    assert "Scored 299 people" in at.success[0].value
    results = at.dataframe[1].value
    assert len(results) == 200 and {"probability", "label", "model_version"} <= set(results.columns)
    assert at.get("download_button")


def test_batch_upload_names_bad_values_empty_cells_and_broken_lines_by_line_and_column(api, monkeypatch, mirror):
    at = page("batch", api.url, monkeypatch)
    rows = (mirror / "adult.test").read_text().splitlines()[1:11]
    fields = [r.split(", ") for r in rows]
    fields[0][0], fields[1][12], fields[2][6], fields[3][10] = "--5", "²", "", "1e3"   # age, hours-per-week, occupation, capital-gain
    fields[4] = fields[4][:10]
    at.file_uploader[0].set_value(("people.csv", ("\n".join(", ".join(f) for f in fields) + "\n").encode(), "text/csv")).run()
    assert not at.exception
    assert at.dataframe[0].value.values.tolist() == [
        [1, "age", "must be a whole number"], [2, "hours-per-week", "must be a whole number"],
        [3, "occupation", "is empty: write ? for unknown"], [4, "capital-gain", "must be a whole number"],
        [5, "(whole line)", "has 10 fields instead of 14 (or 15 with income)"]]
    assert "5 row(s) ready to score" in texts(at)


def test_batch_upload_of_a_file_that_is_not_utf8_says_so(api, monkeypatch, mirror):
    at = page("batch", api.url, monkeypatch)
    rows = (mirror / "adult.test").read_text().splitlines()[1:4]
    rows[1] = rows[1].replace("United-States", "Perú")
    at.file_uploader[0].set_value(("people.csv", "\n".join(rows).encode("latin-1"), "text/csv")).run()
    assert not at.exception and not at.dataframe
    assert "not UTF-8 text: line 2" in at.error[0].value and "save it as UTF-8" in at.error[0].value


def test_model_and_monitoring_pages_read_the_api(api, monkeypatch):
    model = page("model", api.url, monkeypatch)
    assert not model.exception
    described = httpx.get(f"{api.url}/model").json()
    assert f"version **{described['version']}**" in texts(model)
    monitoring = page("monitoring", api.url, monkeypatch)
    assert not monitoring.exception
    logged = [m.value for m in monitoring.metric]
    assert int(logged[0].replace(",", "")) > 0


def test_the_services_objections_are_shown_with_the_forms_labels(api):
    "What the form shows when the API refuses a person: each field by its label in the form, with the API's words."
    def app(url: str):
        import streamlit as st

        from incomeops.client import ApiClient, ApiRejected
        from pages.common import show_rejection
        model = ApiClient(url).model()
        person = {k: v["default"] for k, v in model["input_schema"].items() if k != "education_num"}
        try: ApiClient(url).predict({**person, "age": 12, "education": "Masters", "hours_per_week": 120})
        except ApiRejected as e: show_rejection(e, model["input_schema"])
        else: st.write("accepted")

    at = AppTest.from_function(app, args=(api.url,), default_timeout=60).run()
    assert not at.exception
    message = at.error[0].value
    assert "**Age**: must be at least 17" in message and "**Hours worked per week**: must be at most 99" in message

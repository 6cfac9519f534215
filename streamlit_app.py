"""IncomeOps form: will this person earn more than 50K USD a year?

A front end only: every number on these pages comes from the IncomeOps API (INCOMEOPS_API_URL, default the local
API). If the service asks for a prediction key, give the form the same one in INCOMEOPS_PREDICT_API_KEY: it sends it on
every call, and says so on the page when the key is missing or wrong. Run with `make ui` (or `make serve` for the API and
the form together).
"""
import streamlit as st

st.set_page_config(page_title="IncomeOps", page_icon=":material/work:", layout="wide")
st.navigation([st.Page("pages/predict.py", title="Predict", icon=":material/calculate:", default=True),
               st.Page("pages/batch.py", title="Score a file", icon=":material/upload_file:"),
               st.Page("pages/model.py", title="Model", icon=":material/insights:"),
               st.Page("pages/monitoring.py", title="Monitoring", icon=":material/monitoring:")]).run()

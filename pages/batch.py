"""Score a CSV file of people in the Adult format."""
from __future__ import annotations

import pandas as pd
import streamlit as st

from incomeops.client import ApiRejected, ApiUnavailable, CsvFormatError, read_people_csv
from pages.common import api, key_message


def batch_page() -> None:
    st.title("Score a file")
    st.write("Upload a CSV in the Adult census format, saved as UTF-8: 14 columns (a 15th, income, is ignored), with or without "
             "a header row. Write `?` for an answer that is not known: an empty cell is taken for a slip, not for unknown. "
             "Each row is checked first; the rows that pass can be scored.")
    upload = st.file_uploader("CSV file", type=["csv", "data", "test", "txt"])
    if upload is None: return
    try: people, problems = read_people_csv(upload.getvalue())
    except CsvFormatError as e:
        st.error(f"This file cannot be read: {e}.")
        return
    if len(problems):
        st.warning(f"{problems['line'].nunique():,} row(s) have problems and will be left out. Each problem is named by its line "
                   "in the file and its column; fix them and upload the file again to score those rows too:")
        st.dataframe(problems, hide_index=True, width="stretch",
                     column_config={"line": st.column_config.NumberColumn("Line", format="%d"), "field": "Column", "problem": "Problem"})
    st.write(f"{len(people):,} row(s) ready to score.")
    if not people or not st.button(f"Score {len(people):,} people", type="primary"): return
    bar = st.progress(0.0, text="Scoring...")
    try: answers = api().predict_many(people, progress=lambda done, total: bar.progress(done / total, text=f"Scored {done:,} of {total:,}"))
    except ApiRejected as e:
        st.error(key_message() if e.key_refused else f"Scoring stopped: {e}")
        return
    except ApiUnavailable as e:
        st.error(f"Scoring stopped: {e}. Please try again in a moment.")
        return
    results = pd.DataFrame(people).assign(probability=[a["probability"] for a in answers], label=[a["label"] for a in answers],
                                          model_version=[a["model_version"] for a in answers])
    st.success(f"Scored {len(results):,} people: {(results['label'] == '>50K').mean():.1%} predicted above 50K.")
    st.dataframe(results.head(200), hide_index=True, width="stretch")
    st.download_button("Download all results (CSV)", results.to_csv(index=False).encode(), "incomeops-predictions.csv", "text/csv")


batch_page()

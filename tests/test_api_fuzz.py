"""Property-based fuzzing of the running service from its own OpenAPI schema, with the Schemathesis command line.

Schemathesis generates valid and invalid requests for every operation (examples, coverage, fuzzing and stateful
phases) and checks that none answers 5xx, and that status codes, content types, headers and bodies conform to the
schema. Everything runs with the admin key, so the handlers themselves are exercised, except starting a training job
(each would run the notebook for a minute): that operation is fuzzed without the key.

Two rules are not in the schema: education, its rank or both, and if both they agree (POST /predict documents
it with its 422 answer; written into JSON Schema it is a 17-way `anyOf` that client generators turn into 17 classes), and
which value of a `dataframe_split` row is in which column (the table's column order is the client's).
Schemathesis is told about them by the hook at the end of this file, which it loads (SCHEMATHESIS_HOOKS): the people of
every request it means to be valid follow the rules, so the check that valid data is accepted keeps its force.
"""
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCHEMATHESIS = str(Path(sys.executable).with_name("schemathesis"))
pytestmark = pytest.mark.timeout(900)


def fuzz(api, *args: str) -> subprocess.CompletedProcess:
    cmd = [SCHEMATHESIS, "run", f"{api.url}/openapi.json", "--checks", "all", "--max-examples", "40", "--seed", "42",
           "--request-timeout", "60", "--workers", "1", "--no-color", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=800, env={**os.environ, "SCHEMATHESIS_HOOKS": __file__})


def test_fuzzing_finds_no_server_error_and_no_schema_violation(api):
    # imported here, not above: Schemathesis loads this file for its hooks, without the tests' helpers
    from api_support import ADMIN_KEY
    keyed = fuzz(api, "--exclude-path", "/jobs/train", "-H", f"X-API-Key: {ADMIN_KEY}")
    assert keyed.returncode == 0, keyed.stdout[-6000:]
    assert "No issues found" in keyed.stdout or "passed" in keyed.stdout, keyed.stdout[-3000:]
    unkeyed = fuzz(api, "--include-path", "/jobs/train")
    assert unkeyed.returncode == 0, unkeyed.stdout[-6000:]


# ----------------------------------------------------------------------------------------------- Schemathesis hooks
if __name__ == "_schemathesis_hooks":        # this file, loaded by Schemathesis rather than collected by pytest
    import schemathesis

    from incomeops.cleaning import EDUCATION_LEVELS

    def follow_the_education_rule(person) -> None:
        "Make a generated person's education fields agree: the rank of the education given, else the education of the rank."
        if not isinstance(person, dict): return
        education, rank = person.get("education"), person.get("education_num")
        if education in EDUCATION_LEVELS: person["education_num"] = EDUCATION_LEVELS.index(education) + 1
        elif type(rank) is int and 1 <= rank <= len(EDUCATION_LEVELS): person["education"] = EDUCATION_LEVELS[rank - 1]
        else: person.update(education="HS-grad", education_num=EDUCATION_LEVELS.index("HS-grad") + 1)

    @schemathesis.hook("map_case").apply_to(method="POST", path="/predict")
    def valid_people_follow_the_education_rule(context, case):
        "Requests meant to be valid send people whose education fields agree (invalid ones are left as generated)."
        if case.meta is not None and case.meta.generation.mode.is_positive:
            if isinstance(case.body, dict) and "dataframe_split" in case.body: follow_the_row_rules(case.body["dataframe_split"])
            else:
                for person in case.body if isinstance(case.body, list) else [case.body]: follow_the_education_rule(person)
        return case

    def follow_the_row_rules(table: dict) -> None:
        "A generated table's rows by the rules of their columns (JSON Schema cannot say which value is in which column): example people."
        from incomeops.schema import EXAMPLE_PERSON
        table["columns"] = list(EXAMPLE_PERSON)
        table["data"] = [list(EXAMPLE_PERSON.values())] * max(1, len(table.get("data") or []))

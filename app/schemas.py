"""What the service's answers look like (and the feedback a client sends): the models of the OpenAPI document.

A person's schema is the library's (`incomeops.schema.Person`); the training parameters are `TrainingParams`. Answers built
from the library's dicts are validated against these models on the way out, with the keys the library left out still left
out (the routes use `response_model_exclude_unset`), so the document says exactly what a client receives.
"""
from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PlainSerializer, WithJsonSchema

from incomeops.schema import MAX_BATCH, Person

Label = Literal["<=50K", ">50K"]
Moment = Annotated[datetime, PlainSerializer(datetime.isoformat, return_type=str, when_used="json"),   # "+00:00" as before, not "Z"
                   WithJsonSchema({"type": "string", "format": "date-time"})]
PredictionId = Annotated[str, Field(min_length=32, max_length=32, pattern=r"^[0-9a-f]{32}$",
                                    description="The id `POST /predict` answered with: 32 hexadecimal digits")]


# ----------------------------------------------------------------------------------------------- request bodies
class Feedback(BaseModel):
    "The true income of a person a prediction was made for."
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"prediction_id": "0f8fad5bd9cb469fa16570867728950e", "label": ">50K"}]})
    prediction_id: PredictionId
    label: Label


def one_or_many(model: type[BaseModel]):
    "A body that is one `model` (an object) or a batch of them (an array of 1 to `MAX_BATCH`)."
    return model | Annotated[list[model], Field(min_length=1, max_length=MAX_BATCH)]


PersonField = Literal[tuple(Person.model_fields)]


class Table(BaseModel):
    "A batch as a table, in the order of `columns`."
    model_config = ConfigDict(extra="forbid")
    columns: list[PersonField] = Field(json_schema_extra={"uniqueItems": True},
                                       description="Field names of `Person`, each once (the required ones among them); a field left out is null for everyone")
    data: list[list[int | str | None]] = Field(min_length=1, max_length=MAX_BATCH,
                                               description="One array of values per person, one value per column, each by the rules of its field")
    index: list[Any] | None = Field(None, description="Ignored (pandas' `to_dict(orient='split')` writes it)")


class PeopleTable(BaseModel):
    "A batch as `mlflow models serve` takes it (`dataframe_split`): the field names once, then a row of values per person."
    model_config = ConfigDict(extra="forbid")
    dataframe_split: Table


PeopleBody = one_or_many(Person) | PeopleTable
FeedbackBody = one_or_many(Feedback)


# ----------------------------------------------------------------------------------------------- answers
class Prediction(BaseModel):
    "One answer of `POST /predict`."
    prediction_id: str = Field(description="Quote it in `POST /feedback` to report the true income")
    label: Label
    probability: float = Field(ge=0, le=1, description="Estimated probability that income is above 50K")
    threshold: float = Field(ge=0, le=1, description="The model's decision threshold: label is '>50K' at or above it")
    model_name: str
    model_version: str


class FeedbackResult(BaseModel):
    prediction_id: str
    status: Literal["recorded", "unknown", "duplicate"] = Field(
        description="recorded; unknown: no logged prediction has this id; duplicate: it already had a label (the first is kept)")


class FeedbackAnswer(BaseModel):
    recorded: int = Field(description="How many labels were recorded")
    results: list[FeedbackResult] = Field(description="One result per label, in the order sent")


class Health(BaseModel):
    status: Literal["ok"]
    version: str = Field(description="The IncomeOps version of this process")


class Ready(BaseModel):
    ready: Literal[True]
    model_version: str = Field(description="The registered version being served")


class Parity(BaseModel):
    "How the fast predictor was checked against the trained pipeline at load time."
    rows: int = Field(description="Rows compared")
    max_abs_diff: float = Field(description="The largest difference in probability found")


class InputSpec(BaseModel):
    "One input of the form: its type and limits or categories, whether it may be unknown, its default, label and help."
    type: Literal["integer", "category"]
    minimum: int | None = Field(None, description="integer inputs: the smallest value accepted")
    maximum: int | None = Field(None, description="integer inputs: the largest value accepted")
    categories: list[str] | None = Field(None, description="category inputs: the values accepted, in the data set's order")
    nullable: bool = Field(description="Whether null (unknown) is accepted")
    default: int | str = Field(description="The value a form starts with")
    label: str
    help: str


class ModelDescription(BaseModel):
    "The model being served."
    name: str
    version: str
    alias: str = Field(description="The registry alias it was loaded by")
    run_id: str | None = Field(description="The MLflow run that trained it")
    family: str | None
    dataset_version: str | None = Field(description="The data snapshot it was trained on")
    threshold: float = Field(ge=0, le=1, description="The decision threshold")
    test_metrics: dict[str, float] = Field(description="Its metrics on the test set, by name (roc_auc, accuracy, ...)")
    backend: str = Field(description="What computes the probabilities (onnx, or sklearn when the conversion is not exact)")
    parity: Parity
    loaded_at: Moment
    load_seconds: float
    input_schema: dict[str, InputSpec] = Field(description="Each input a form asks for, by field name")


SliceValue = str | float | int | None


class ModelCard(BaseModel):
    "The champion's model card, its performance by group and the names of its evaluation plots."
    version: str
    markdown: str | None = Field(description="The model card (Markdown); null if the training run wrote none")
    slices: list[dict[str, SliceValue]] = Field(description="One row per group: its column, value, size and metrics")
    plots: list[str] = Field(description="Plot names, for `GET /model/plots/{name}`")


class ReloadAnswer(BaseModel):
    changed: bool = Field(description="Whether another version is served now")
    model_version: str


class Job(BaseModel):
    "A background job (training, monitoring, retraining)."
    id: str
    kind: Literal["train", "monitor", "retrain"]
    status: Literal["queued", "running", "succeeded", "failed", "cancelled"]
    params: dict[str, Any] = Field(description="What it was started with")
    created_at: Moment
    started_at: Moment | None = None
    finished_at: Moment | None = None
    seconds: float | None = Field(None, description="How long it ran")
    outcome: dict[str, Any] | None = Field(None, description="What it produced, by kind (a model version, a monitoring verdict)")
    error: str | None = Field(None, description="Why it failed or was cancelled")


class LiveMetrics(BaseModel):
    "The served model's metrics at its threshold on the newest labelled predictions."
    roc_auc: float
    pr_auc: float
    log_loss: float
    brier: float
    accuracy: float
    f1: float
    precision: float
    recall: float
    threshold: float
    n: int = Field(description="Labelled predictions scored")
    positives: int


class Alert(BaseModel):
    id: int
    kind: str = Field(description="The rule that fired: drift, input_drift, score_drift, positive_share, performance, data_quality, "
                                  "retrain_failed, promotion, ...")
    message: str
    details: dict[str, Any]
    created_at: Moment


class Retraining(BaseModel):
    "One retraining job and what came of it."
    job_id: str
    started: Moment
    status: str
    reason: str | None
    champion_version: str | None
    new_version: str | int | None
    decision: str | None
    production_rows: int | None
    error: str | None


class HourVolume(BaseModel):
    hour: Moment
    label: Label
    count: int


class RuleFired(BaseModel):
    kind: str = Field(description="The rule: drift, input_drift, score_drift, positive_share, performance, data_quality")
    inputs: list[str] = Field(description="The model inputs it names (empty for rules about the scores or the labels)")


class CheckPoint(BaseModel):
    "One monitoring check: when, on how many rows, which rules fired."
    checked_at: Moment
    window_rows: int | None = Field(description="Recent predictions checked")
    labelled_rows: int | None = Field(description="How many of them had a true label")
    rules: list[RuleFired]
    retraining_started: bool


class DriftPoint(BaseModel):
    "One input at one check."
    checked_at: Moment
    feature: str = Field(description="The model input")
    psi: float = Field(description="Population stability index of its recent values against the training data")
    drifted: bool
    weight: float | None = Field(description="Its share of the champion's importance, as the drift rule weighs it (null: not stored)")
    rules: list[str] = Field(description="The rules that fired at this check naming this input")


class MonitoringSummary(BaseModel):
    "Prediction volume, live performance, the last monitoring check, alerts and retrainings."
    predictions: int = Field(description="Predictions logged")
    labelled: int = Field(description="Logged predictions with a true label")
    model_version: str | None = Field(description="The version served (null: none yet)")
    metrics: LiveMetrics | None = Field(None, description="Present once there are labels of both kinds")
    metrics_window_rows: int | None = Field(None, description="How many labelled predictions `metrics` is computed on")
    last_check: dict[str, Any] | None = Field(description="The verdict of the newest monitoring job that succeeded (with `checked_at`)")
    retraining: list[Retraining]
    alerts: list[Alert]
    volume: list[HourVolume] = Field(description="Predictions of the last 24 hours per hour and predicted label")
    checks: list[CheckPoint] = Field(description="The last monitoring checks that succeeded (up to 20), oldest first")
    drift_history: list[DriftPoint] = Field(description="Each input's drift at each of those checks, oldest first")
    important_inputs: list[str] = Field(description="The inputs carrying more than an equal share of the champion's importance, heaviest first")

"""InferencePool v1alpha1: the typed spec and status, and the one source of the CRD schema.

The API server enforces the same rules through the generated OpenAPI schema and
its CEL rules (`x-kubernetes-validations`), so a bad manifest is rejected at
`kubectl apply` time; the pydantic validators below mirror those rules for
callers that never reach an API server (the operator's parse step, tests,
`examples/`). Every error message names the field it is about.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, ClassVar, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, JsonValue, model_validator

GROUP = "tandem.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "InferencePool"
PLURAL = "inferencepools"
SINGULAR = "inferencepool"
SHORT_NAMES = ("tpool",)  # never "infpool": the Gateway API Inference Extension owns it
CATEGORIES = ("tandem",)

#: Pool names prefix Service names (`<pool>-prefill`), which must be DNS-1035 labels of
#: at most 63 characters; the longest suffix is "-prefill" / "-router-view".
MAX_POOL_NAME = 50
POOL_NAME_PATTERN = r"^[a-z]([-a-z0-9]*[a-z0-9])?$"

_DURATION_PATTERN = r"^([0-9]+(\.[0-9]+)?(ns|us|ms|s|m|h))+$"
_DURATION_UNITS = {"ns": 1e-9, "us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_DURATION_PART = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ns|us|ms|s|m|h)")
_QUANTITY_PATTERN = r"^[0-9]+(\.[0-9]+)?(m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?$"
_DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"


def parse_duration(text: str) -> float:
    """Seconds in a Go-style duration string ("1s", "50ms", "1m30s")."""
    if not re.fullmatch(_DURATION_PATTERN, text):
        raise ValueError(f"{text!r} is not a duration such as 500ms, 1s or 1m30s")
    return sum(float(n) * _DURATION_UNITS[u] for n, u in _DURATION_PART.findall(text))


def _positive_duration(text: str) -> str:
    if parse_duration(text) <= 0:
        raise ValueError(f"must be a positive duration, got {text!r}")
    return text


def _cel_positive(field: str) -> dict[str, JsonValue]:
    return {
        "x-kubernetes-validations": [
            {
                "rule": "duration(self) > duration('0s')",
                "message": f"{field} must be a positive duration such as 500ms or 1s",
            }
        ]
    }


def _duration_field(field: str, description: str) -> Any:
    """Schema of a positive duration; the CEL rule repeats the pydantic check server-side."""
    return Field(
        pattern=_DURATION_PATTERN,
        max_length=32,
        description=description,
        json_schema_extra=_cel_positive(field),
    )


TtftSLO = Annotated[
    str,
    _duration_field("ttftSLO", "Time-to-first-token deadline used for admission."),
    AfterValidator(_positive_duration),
]
TtftP99 = Annotated[
    str,
    _duration_field("ttftP99", "Target p99 time to first token."),
    AfterValidator(_positive_duration),
]
TpotP99 = Annotated[
    str,
    _duration_field("tpotP99", "Target p99 time per output token."),
    AfterValidator(_positive_duration),
]


Quantity = Annotated[str, Field(pattern=_QUANTITY_PATTERN, max_length=32)]


class _Model(BaseModel):
    """camelCase on the wire, unknown fields rejected (the API server prunes them anyway)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True, frozen=True)


class ModelSource(_Model):
    """Which model the workers serve and where its Hugging Face-format folder lives."""

    name: str = Field(
        min_length=1,
        max_length=128,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._/-]*$",
        description="Served model name: the `model` field clients send to the OpenAI API.",
    )
    uri: str = Field(
        max_length=1024,
        pattern=r"^(pvc://[a-z0-9]([-a-z0-9]*[a-z0-9])?(/[^/].*)?|hostPath:///.*)$",
        description=(
            "Model folder: `pvc://<claim>[/<path>]` mounts a PersistentVolumeClaim read-only, "
            "`hostPath:///<absolute path>` mounts a node folder."
        ),
    )
    dtype: Literal["bfloat16", "float16", "float32"] = Field(
        default="bfloat16", description="Weight and activation dtype."
    )
    max_model_len: int | None = Field(
        default=None,
        alias="maxModelLen",
        ge=16,
        le=1048576,
        description="Longest prompt plus completion, in tokens; unset means the model's own.",
    )


#: The pod-level rules on a toleration, so that a pool the API server accepts does not
#: render a Deployment whose pod template it refuses: (CEL rule, message, field).
_TOLERATION_RULES = (
    (
        "!(has(self.operator) && self.operator == 'Exists' && has(self.value) && self.value != '')",
        "tolerations[].value must be empty when operator is Exists",
        ".value",
    ),
    (
        "(has(self.key) && self.key != '') || (has(self.operator) && self.operator == 'Exists')",
        "tolerations[].key may be empty only when operator is Exists (it then matches every taint)",
        ".key",
    ),
    (
        "!has(self.tolerationSeconds) || (has(self.effect) && self.effect == 'NoExecute')",
        "tolerations[].tolerationSeconds needs effect NoExecute",
        ".tolerationSeconds",
    ),
)


class Toleration(_Model):
    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {"rule": rule, "message": message, "fieldPath": path, "reason": "FieldValueInvalid"}
                for rule, message, path in _TOLERATION_RULES
            ]
        }
    )

    key: str | None = Field(default=None, max_length=253)
    operator: Literal["Exists", "Equal"] | None = None
    value: str | None = Field(default=None, max_length=63)
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None
    toleration_seconds: int | None = Field(default=None, alias="tolerationSeconds", ge=0)

    @model_validator(mode="after")
    def _pod_rules(self) -> Toleration:
        exists = self.operator == "Exists"
        if exists and self.value:
            raise ValueError(_TOLERATION_RULES[0][1])
        if not self.key and not exists:
            raise ValueError(_TOLERATION_RULES[1][1])
        if self.toleration_seconds is not None and self.effect != "NoExecute":
            raise ValueError(_TOLERATION_RULES[2][1])
        return self


class ResourceAmounts(_Model):
    cpu: Quantity | None = None
    memory: Quantity | None = None


class Resources(_Model):
    """CPU and memory for each pod (GPUs come from `gpusPerReplica`)."""

    requests: ResourceAmounts | None = None
    limits: ResourceAmounts | None = None


class Placement(_Model):
    """Pod placement and sizing shared by the router and the worker roles."""

    resources: Resources | None = None
    node_selector: dict[str, str] | None = Field(default=None, alias="nodeSelector")
    tolerations: list[Toleration] | None = Field(default=None, max_length=32)


class RouterSpec(Placement):
    replicas: int = Field(default=1, ge=0, le=64, description="Router pods.")


def _role_rules(role: str) -> dict[str, JsonValue]:
    return {
        "x-kubernetes-validations": [
            {
                "rule": "!has(self.maxReplicas) || self.minReplicas <= self.maxReplicas",
                "message": f"spec.{role}.minReplicas must not exceed spec.{role}.maxReplicas",
                "fieldPath": ".minReplicas",
                "reason": "FieldValueInvalid",
            },
            {
                "rule": (
                    "self.minReplicas <= self.replicas && "
                    "(!has(self.maxReplicas) || self.replicas <= self.maxReplicas)"
                ),
                "message": (
                    f"spec.{role}.replicas must lie between spec.{role}.minReplicas "
                    f"and spec.{role}.maxReplicas"
                ),
                "fieldPath": ".replicas",
                "reason": "FieldValueInvalid",
            },
        ]
    }


class RoleSpec(Placement):
    """One worker pool (prefill or decode): its size, bounds and GPUs per pod."""

    replicas: int = Field(default=1, ge=0, le=1024, description="Worker pods of this role.")
    min_replicas: int = Field(
        default=0, alias="minReplicas", ge=0, le=1024, description="Autoscaling floor."
    )
    max_replicas: int | None = Field(
        default=None,
        alias="maxReplicas",
        ge=0,
        le=1024,
        description="Autoscaling ceiling; unset means bounded only by autoscaling.maxGPUs.",
    )
    gpus_per_replica: int = Field(
        default=1,
        alias="gpusPerReplica",
        ge=0,
        le=16,
        description="GPUs (`nvidia.com/gpu`) per pod; 0 runs on CPU.",
    )

    ROLE: ClassVar[str] = "worker"

    @model_validator(mode="after")
    def _bounds(self) -> RoleSpec:
        role = self.ROLE
        if self.max_replicas is not None and self.min_replicas > self.max_replicas:
            raise ValueError(f"spec.{role}.minReplicas must not exceed spec.{role}.maxReplicas")
        upper = self.max_replicas if self.max_replicas is not None else self.replicas
        if not self.min_replicas <= self.replicas <= upper:
            raise ValueError(
                f"spec.{role}.replicas must lie between spec.{role}.minReplicas "
                f"and spec.{role}.maxReplicas"
            )
        return self


class PrefillSpec(RoleSpec):
    model_config = ConfigDict(json_schema_extra=_role_rules("prefill"))
    ROLE: ClassVar[str] = "prefill"


class DecodeSpec(RoleSpec):
    model_config = ConfigDict(json_schema_extra=_role_rules("decode"))
    ROLE: ClassVar[str] = "decode"

    min_replicas: int = Field(
        default=1, alias="minReplicas", ge=0, le=1024, description="Autoscaling floor."
    )


class Disaggregation(_Model):
    min_prompt_tokens: int = Field(
        default=256,
        alias="minPromptTokens",
        ge=0,
        le=1048576,
        description="Prompts with fewer uncached tokens prefill on the decode pod itself.",
    )


class KVTransfer(_Model):
    transport: Literal["auto", "grpc", "shm", "cuda-ipc"] = Field(
        default="auto", description="KV shipping transport; auto picks the fastest per pod pair."
    )


class PriorityClass(_Model):
    name: str = Field(min_length=1, max_length=63, pattern=_DNS_LABEL)
    priority: int = Field(ge=0, le=1000000, description="Higher is served first.")
    ttft_slo: TtftSLO | None = Field(default=None, alias="ttftSLO")


_UNIQUE_NAMES: dict[str, JsonValue] = {
    "x-kubernetes-validations": [
        {
            "rule": "self.all(c, self.exists_one(d, d.name == c.name))",
            "message": "spec.traffic.priorityClasses names must be unique",
        }
    ]
}


class Traffic(_Model):
    priority_classes: list[PriorityClass] | None = Field(
        default=None,
        alias="priorityClasses",
        max_length=16,
        json_schema_extra=_UNIQUE_NAMES,
    )

    @model_validator(mode="after")
    def _unique(self) -> Traffic:
        names = [c.name for c in self.priority_classes or ()]
        if len(set(names)) != len(names):
            raise ValueError("spec.traffic.priorityClasses names must be unique")
        return self


def _default_of(model: type[_Model]) -> dict[str, JsonValue]:
    """The object's defaults in full: the API server checks a default against the CEL rules
    as it stands, before the defaults of its own fields would fill it in."""
    return {"default": model().model_dump(by_alias=True, exclude_none=True, mode="json")}


def _at_least(field: str, floor: str) -> dict[str, JsonValue]:
    return {
        "x-kubernetes-validations": [
            {
                "rule": f"duration(self) >= duration('{floor}')",
                "message": f"{field} must be at least {floor}",
            }
        ]
    }


def _min_duration(floor: float, field: str) -> Any:
    def check(text: str) -> str:
        if parse_duration(text) < floor:
            raise ValueError(f"{field} must be at least {floor:g}s, got {text!r}")
        return text

    return AfterValidator(check)


def _checked_duration(text: str) -> str:
    parse_duration(text)
    return text


#: A duration that may be zero (stabilization windows, cooldown).
Window = Annotated[
    str, Field(pattern=_DURATION_PATTERN, max_length=32), AfterValidator(_checked_duration)
]
ScrapeInterval = Annotated[
    str,
    Field(pattern=_DURATION_PATTERN, max_length=32, json_schema_extra=_at_least("interval", "1s")),
    _min_duration(1.0, "spec.autoscaling.metrics.interval"),
]
RateWindow = Annotated[
    str,
    Field(pattern=_DURATION_PATTERN, max_length=32, json_schema_extra=_at_least("window", "1s")),
    _min_duration(1.0, "spec.autoscaling.metrics.prometheus.window"),
]


class PrometheusSource(_Model):
    """A Prometheus HTTP API that already scrapes the pool (the chart's PodMonitor labels
    every series with `namespace`, `pod`, `pool` and `role`)."""

    url: str = Field(
        max_length=1024,
        pattern=r"^https?://[^\s/]+(/\S*)?$",
        description="Base URL of the Prometheus HTTP API, e.g. http://prometheus.monitoring:9090.",
    )
    window: RateWindow = Field(
        default="1m",
        description="Range of rate() and histogram_quantile(); at least twice Prometheus' "
        "own scrape interval.",
    )


_PROMETHEUS_NEEDED: dict[str, JsonValue] = {
    "x-kubernetes-validations": [
        {
            "rule": "self.source != 'prometheus' || has(self.prometheus)",
            "message": "spec.autoscaling.metrics.prometheus is required when source is prometheus",
            "fieldPath": ".prometheus",
            "reason": "FieldValueRequired",
        }
    ]
}


class ScalingMetrics(_Model):
    """Where the scaling loop reads its signals, and how often it decides."""

    model_config = ConfigDict(json_schema_extra=_PROMETHEUS_NEEDED)

    source: Literal["scrape", "prometheus"] = Field(
        default="scrape",
        description="scrape: the operator reads the router and worker pods' /metrics itself "
        "(no Prometheus needed); prometheus: it queries the Prometheus HTTP API below.",
    )
    interval: ScrapeInterval = Field(
        default="15s",
        description="Period of the scaling loop; with source scrape also the window the "
        "rates and percentiles cover (two scrapes this far apart).",
    )
    prometheus: PrometheusSource | None = None

    @model_validator(mode="after")
    def _source(self) -> ScalingMetrics:
        if self.source == "prometheus" and self.prometheus is None:
            raise ValueError(
                "spec.autoscaling.metrics.prometheus is required when source is prometheus"
            )
        return self


class Autoscaling(_Model):
    enabled: bool = Field(default=False, description="Let the operator move capacity.")
    max_gpus: int | None = Field(
        default=None, alias="maxGPUs", ge=1, le=100000, description="GPU budget of the pool."
    )
    ttft_p99: TtftP99 | None = Field(default=None, alias="ttftP99")
    tpot_p99: TpotP99 | None = Field(default=None, alias="tpotP99")
    role_switching: bool = Field(
        default=False, alias="roleSwitching", description="Flip pods between roles in budget."
    )
    target_busy_percent: int = Field(
        default=80,
        alias="targetBusyPercent",
        ge=1,
        le=100,
        description="Busy fraction of the prefill workers (percent of wall time with model "
        "work) at which their pressure is 1.",
    )
    target_kv_usage_percent: int = Field(
        default=80,
        alias="targetKVUsagePercent",
        ge=1,
        le=100,
        description="KV-block usage of the decode workers (percent) at which their pressure is 1.",
    )
    tolerance_percent: int = Field(
        default=10,
        alias="tolerancePercent",
        ge=0,
        le=99,
        description="A pressure within this many percent of 1 changes nothing (HPA: 10).",
    )
    scale_up_window: Window = Field(
        default="30s",
        alias="scaleUpWindow",
        description="A role grows only to the least size recommended over this window.",
    )
    scale_down_window: Window = Field(
        default="2m",
        alias="scaleDownWindow",
        description="A role shrinks (or gives a worker in a flip) only to the largest size "
        "recommended over this window.",
    )
    cooldown: Window = Field(
        default="30s", description="No new change sooner than this after the last one."
    )
    min_requests: int = Field(
        default=20,
        alias="minRequests",
        ge=0,
        le=1000000,
        description="Finished requests a window needs before TTFT/TPOT percentiles count.",
    )
    scale_up_step: int = Field(
        default=4,
        alias="scaleUpStep",
        ge=1,
        le=1024,
        description="Growth per decision: at most max(this, the role's current size) workers.",
    )
    scale_down_percent: int = Field(
        default=25,
        alias="scaleDownPercent",
        ge=1,
        le=100,
        description="Shrink or flips per decision: at most max(1, this percent of the role).",
    )
    metrics: ScalingMetrics = Field(
        default_factory=ScalingMetrics, json_schema_extra=_default_of(ScalingMetrics)
    )


_BUDGET_RULE: dict[str, JsonValue] = {
    "x-kubernetes-validations": [
        {
            "rule": (
                "!has(self.autoscaling) || !has(self.autoscaling.maxGPUs) || "
                "self.autoscaling.maxGPUs >= "
                "self.prefill.minReplicas * self.prefill.gpusPerReplica + "
                "self.decode.minReplicas * self.decode.gpusPerReplica"
            ),
            "message": (
                "spec.autoscaling.maxGPUs must cover the minimums: "
                "prefill.minReplicas*prefill.gpusPerReplica + "
                "decode.minReplicas*decode.gpusPerReplica"
            ),
            "fieldPath": ".autoscaling.maxGPUs",
            "reason": "FieldValueInvalid",
        }
    ]
}


class InferencePoolSpec(_Model):
    model_config = ConfigDict(json_schema_extra=_BUDGET_RULE)

    model: ModelSource
    image: str | None = Field(
        default=None,
        min_length=1,
        max_length=512,
        description="Image of routers and workers; defaults to the operator's own.",
    )
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] | None = Field(
        default=None, alias="imagePullPolicy"
    )
    router: RouterSpec = Field(
        default_factory=RouterSpec, json_schema_extra=_default_of(RouterSpec)
    )
    prefill: PrefillSpec = Field(
        default_factory=PrefillSpec, json_schema_extra=_default_of(PrefillSpec)
    )
    decode: DecodeSpec = Field(
        default_factory=DecodeSpec, json_schema_extra=_default_of(DecodeSpec)
    )
    disaggregation: Disaggregation = Field(
        default_factory=Disaggregation, json_schema_extra=_default_of(Disaggregation)
    )
    kv_transfer: KVTransfer = Field(
        default_factory=KVTransfer, alias="kvTransfer", json_schema_extra=_default_of(KVTransfer)
    )
    traffic: Traffic | None = None
    autoscaling: Autoscaling | None = None

    @model_validator(mode="after")
    def _budget(self) -> InferencePoolSpec:
        budget = self.autoscaling.max_gpus if self.autoscaling else None
        floor = (
            self.prefill.min_replicas * self.prefill.gpus_per_replica
            + self.decode.min_replicas * self.decode.gpus_per_replica
        )
        if budget is not None and budget < floor:
            raise ValueError(
                f"spec.autoscaling.maxGPUs={budget} must cover the minimums "
                f"(prefill.minReplicas*prefill.gpusPerReplica + "
                f"decode.minReplicas*decode.gpusPerReplica = {floor})"
            )
        return self


ConditionType = Literal["Ready", "Progressing", "Degraded", "ScalingLimited"]


class Condition(_Model):
    type: ConditionType
    status: Literal["True", "False", "Unknown"]
    reason: str = Field(max_length=1024, pattern=r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$")
    message: str = Field(default="", max_length=32768)
    last_transition_time: str | None = Field(default=None, alias="lastTransitionTime")
    observed_generation: int | None = Field(default=None, alias="observedGeneration", ge=0)


class ReplicaStatus(_Model):
    replicas: int = Field(default=0, ge=0, description="Desired pods.")
    ready_replicas: int = Field(default=0, alias="readyReplicas", ge=0)
    ready: str = Field(default="0/0", description="ready/desired, for `kubectl get`.")


class LastScaling(_Model):
    """The last scaling decision that changed something: the operator sizes the pool from
    these counts (they are its desired state), so a restart resumes where it was."""

    time: str | None = None
    prefill: int | None = Field(default=None, ge=0)
    decode: int | None = Field(default=None, ge=0)
    reason: str | None = None
    action: str | None = Field(default=None, description="scale or flip")


class InferencePoolStatus(_Model):
    observed_generation: int | None = Field(default=None, alias="observedGeneration")
    conditions: list[Condition] | None = None
    prefill: ReplicaStatus | None = None
    decode: ReplicaStatus | None = None
    router: ReplicaStatus | None = None
    last_scaling: LastScaling | None = Field(default=None, alias="lastScaling")


class InferencePool(_Model):
    """The whole object as the API server returns it (metadata kept loosely typed)."""

    api_version: Literal["tandem.dev/v1alpha1"] = Field(
        default="tandem.dev/v1alpha1", alias="apiVersion"
    )
    kind: Literal["InferencePool"] = "InferencePool"
    metadata: dict[str, Any] = Field(default_factory=dict)
    spec: InferencePoolSpec
    status: InferencePoolStatus | None = None

    @model_validator(mode="after")
    def _name(self) -> InferencePool:
        name = self.metadata.get("name")
        if name is not None and (
            len(name) > MAX_POOL_NAME or not re.fullmatch(POOL_NAME_PATTERN, name)
        ):
            raise ValueError(
                f"metadata.name {name!r} must be a DNS-1035 label of at most "
                f"{MAX_POOL_NAME} characters (it prefixes Service names)"
            )
        return self

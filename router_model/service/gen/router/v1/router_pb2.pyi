import datetime

from google.protobuf import struct_pb2 as _struct_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ImageUrl(_message.Message):
    __slots__ = ("url", "detail")
    URL_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    url: str
    detail: str
    def __init__(self, url: _Optional[str] = ..., detail: _Optional[str] = ...) -> None: ...

class ContentPart(_message.Message):
    __slots__ = ("type", "text", "image_url")
    TYPE_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    IMAGE_URL_FIELD_NUMBER: _ClassVar[int]
    type: str
    text: str
    image_url: ImageUrl
    def __init__(self, type: _Optional[str] = ..., text: _Optional[str] = ..., image_url: _Optional[_Union[ImageUrl, _Mapping]] = ...) -> None: ...

class ChatMessage(_message.Message):
    __slots__ = ("role", "content", "parts")
    ROLE_FIELD_NUMBER: _ClassVar[int]
    CONTENT_FIELD_NUMBER: _ClassVar[int]
    PARTS_FIELD_NUMBER: _ClassVar[int]
    role: str
    content: str
    parts: _containers.RepeatedCompositeFieldContainer[ContentPart]
    def __init__(self, role: _Optional[str] = ..., content: _Optional[str] = ..., parts: _Optional[_Iterable[_Union[ContentPart, _Mapping]]] = ...) -> None: ...

class RouteRequest(_message.Message):
    __slots__ = ("prompt", "messages", "tags", "request_id", "candidates")
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    TAGS_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    CANDIDATES_FIELD_NUMBER: _ClassVar[int]
    prompt: str
    messages: _containers.RepeatedCompositeFieldContainer[ChatMessage]
    tags: _containers.RepeatedScalarFieldContainer[str]
    request_id: str
    candidates: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, prompt: _Optional[str] = ..., messages: _Optional[_Iterable[_Union[ChatMessage, _Mapping]]] = ..., tags: _Optional[_Iterable[str]] = ..., request_id: _Optional[str] = ..., candidates: _Optional[_Iterable[str]] = ...) -> None: ...

class RouteResponse(_message.Message):
    __slots__ = ("model", "p_cheap_ok", "confidence", "reason", "threshold", "artifact_version", "latency_us", "prompt_tokens", "request_id", "observe_only", "p_pass", "expected_cost_usd")
    class PPassEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    MODEL_FIELD_NUMBER: _ClassVar[int]
    P_CHEAP_OK_FIELD_NUMBER: _ClassVar[int]
    CONFIDENCE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    ARTIFACT_VERSION_FIELD_NUMBER: _ClassVar[int]
    LATENCY_US_FIELD_NUMBER: _ClassVar[int]
    PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    OBSERVE_ONLY_FIELD_NUMBER: _ClassVar[int]
    P_PASS_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_COST_USD_FIELD_NUMBER: _ClassVar[int]
    model: str
    p_cheap_ok: float
    confidence: float
    reason: str
    threshold: float
    artifact_version: str
    latency_us: int
    prompt_tokens: int
    request_id: str
    observe_only: bool
    p_pass: _containers.ScalarMap[str, float]
    expected_cost_usd: float
    def __init__(self, model: _Optional[str] = ..., p_cheap_ok: _Optional[float] = ..., confidence: _Optional[float] = ..., reason: _Optional[str] = ..., threshold: _Optional[float] = ..., artifact_version: _Optional[str] = ..., latency_us: _Optional[int] = ..., prompt_tokens: _Optional[int] = ..., request_id: _Optional[str] = ..., observe_only: _Optional[bool] = ..., p_pass: _Optional[_Mapping[str, float]] = ..., expected_cost_usd: _Optional[float] = ...) -> None: ...

class RouteBatchRequest(_message.Message):
    __slots__ = ("requests",)
    REQUESTS_FIELD_NUMBER: _ClassVar[int]
    requests: _containers.RepeatedCompositeFieldContainer[RouteRequest]
    def __init__(self, requests: _Optional[_Iterable[_Union[RouteRequest, _Mapping]]] = ...) -> None: ...

class RouteBatchResponse(_message.Message):
    __slots__ = ("responses", "latency_us")
    RESPONSES_FIELD_NUMBER: _ClassVar[int]
    LATENCY_US_FIELD_NUMBER: _ClassVar[int]
    responses: _containers.RepeatedCompositeFieldContainer[RouteResponse]
    latency_us: int
    def __init__(self, responses: _Optional[_Iterable[_Union[RouteResponse, _Mapping]]] = ..., latency_us: _Optional[int] = ...) -> None: ...

class GetModelInfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ModelInfo(_message.Message):
    __slots__ = ("artifact_version", "cheap_model", "strong_model", "threshold", "metrics", "metadata", "model_dir", "loaded_at", "observe_only", "goal", "goal_value", "risk", "method", "certified_floor", "certified", "n_labelled", "models", "policy", "policy_value", "best_single_model", "model_uri", "registry_version", "registry_alias", "escalation_on", "answer_threshold", "escalation_family")
    class MetricsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    ARTIFACT_VERSION_FIELD_NUMBER: _ClassVar[int]
    CHEAP_MODEL_FIELD_NUMBER: _ClassVar[int]
    STRONG_MODEL_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    MODEL_DIR_FIELD_NUMBER: _ClassVar[int]
    LOADED_AT_FIELD_NUMBER: _ClassVar[int]
    OBSERVE_ONLY_FIELD_NUMBER: _ClassVar[int]
    GOAL_FIELD_NUMBER: _ClassVar[int]
    GOAL_VALUE_FIELD_NUMBER: _ClassVar[int]
    RISK_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    CERTIFIED_FLOOR_FIELD_NUMBER: _ClassVar[int]
    CERTIFIED_FIELD_NUMBER: _ClassVar[int]
    N_LABELLED_FIELD_NUMBER: _ClassVar[int]
    MODELS_FIELD_NUMBER: _ClassVar[int]
    POLICY_FIELD_NUMBER: _ClassVar[int]
    POLICY_VALUE_FIELD_NUMBER: _ClassVar[int]
    BEST_SINGLE_MODEL_FIELD_NUMBER: _ClassVar[int]
    MODEL_URI_FIELD_NUMBER: _ClassVar[int]
    REGISTRY_VERSION_FIELD_NUMBER: _ClassVar[int]
    REGISTRY_ALIAS_FIELD_NUMBER: _ClassVar[int]
    ESCALATION_ON_FIELD_NUMBER: _ClassVar[int]
    ANSWER_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    ESCALATION_FAMILY_FIELD_NUMBER: _ClassVar[int]
    artifact_version: str
    cheap_model: str
    strong_model: str
    threshold: float
    metrics: _containers.ScalarMap[str, float]
    metadata: _struct_pb2.Struct
    model_dir: str
    loaded_at: _timestamp_pb2.Timestamp
    observe_only: bool
    goal: str
    goal_value: float
    risk: float
    method: str
    certified_floor: float
    certified: bool
    n_labelled: int
    models: _containers.RepeatedScalarFieldContainer[str]
    policy: str
    policy_value: float
    best_single_model: str
    model_uri: str
    registry_version: str
    registry_alias: str
    escalation_on: bool
    answer_threshold: float
    escalation_family: str
    def __init__(self, artifact_version: _Optional[str] = ..., cheap_model: _Optional[str] = ..., strong_model: _Optional[str] = ..., threshold: _Optional[float] = ..., metrics: _Optional[_Mapping[str, float]] = ..., metadata: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., model_dir: _Optional[str] = ..., loaded_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., observe_only: _Optional[bool] = ..., goal: _Optional[str] = ..., goal_value: _Optional[float] = ..., risk: _Optional[float] = ..., method: _Optional[str] = ..., certified_floor: _Optional[float] = ..., certified: _Optional[bool] = ..., n_labelled: _Optional[int] = ..., models: _Optional[_Iterable[str]] = ..., policy: _Optional[str] = ..., policy_value: _Optional[float] = ..., best_single_model: _Optional[str] = ..., model_uri: _Optional[str] = ..., registry_version: _Optional[str] = ..., registry_alias: _Optional[str] = ..., escalation_on: _Optional[bool] = ..., answer_threshold: _Optional[float] = ..., escalation_family: _Optional[str] = ...) -> None: ...

class ReloadRequest(_message.Message):
    __slots__ = ("model_dir",)
    MODEL_DIR_FIELD_NUMBER: _ClassVar[int]
    model_dir: str
    def __init__(self, model_dir: _Optional[str] = ...) -> None: ...

class ReloadResponse(_message.Message):
    __slots__ = ("previous_version", "artifact_version", "model_dir", "load_ms")
    PREVIOUS_VERSION_FIELD_NUMBER: _ClassVar[int]
    ARTIFACT_VERSION_FIELD_NUMBER: _ClassVar[int]
    MODEL_DIR_FIELD_NUMBER: _ClassVar[int]
    LOAD_MS_FIELD_NUMBER: _ClassVar[int]
    previous_version: str
    artifact_version: str
    model_dir: str
    load_ms: int
    def __init__(self, previous_version: _Optional[str] = ..., artifact_version: _Optional[str] = ..., model_dir: _Optional[str] = ..., load_ms: _Optional[int] = ...) -> None: ...

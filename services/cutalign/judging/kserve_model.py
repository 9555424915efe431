"""The judge as a ``kserve.Model``: synchronous judging of (instruction, response[, reference]) over v1/v2.

    python -m cutalign.judging.kserve_model --judge counting --http_port 8080 [--model_name judge]

The judge comes from ``JudgeSettings`` exactly as in the Kafka service (``--judge``/``--options_json``
flags or ``CUTALIGN_JUDGE_*``), gaming guard included; calls get the same deadline and retries
(:mod:`cutalign.judging.calls`) in worker processes, awaited off the event loop.

* v1 ``POST /v1/models/{name}:predict`` with ``{"instances": [{"instruction": "...", "response": "...",
  "reference": {...}}]}`` answers ``{"predictions": [{"text", "positive", "error_spans": [[start, end]],
  "judge_id"}]}``;
* v2 ``POST /v2/models/{name}/infer`` takes BYTES inputs ``instruction`` and ``response`` (and optionally
  ``reference``, JSON objects) of equal shape ``[n]`` and answers outputs ``text`` (BYTES), ``positive``
  (BOOL), ``error_spans`` (BYTES, JSON lists) and ``judge_id`` (BYTES).

A malformed request is the client's mistake: ``kserve.errors.InvalidInput``, HTTP 400 naming the problem.
A judge that keeps failing is ours: ``InferenceError`` (500) with ``judge_failed: <Type>: <message>`` —
never a made-up judgment.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import logging
from typing import Any

import kserve
from kserve.errors import InferenceError, InvalidInput
from kserve.protocol.infer_type import InferOutput, InferRequest, InferResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from cutalign.config import JudgeSettings
from cutalign.judges.base import Judge, Judgment, judge_id_of
from cutalign.judges.loader import judge_from_settings
from cutalign.judging.calls import JudgeInput, JudgePool, error_name, judge_all
from cutalign.judging.metrics import JUDGMENTS, polarity_label, record_call

log = logging.getLogger(__name__)

MAX_ROWS = 64


class V1Instance(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    instruction: str
    response: str
    reference: dict[str, Any] | None = None


class V1Request(BaseModel):
    model_config = ConfigDict(extra="forbid")

    instances: list[V1Instance] = Field(min_length=1, max_length=MAX_ROWS)


class JudgeModel(kserve.Model):
    def __init__(self, name: str, settings: JudgeSettings) -> None:
        super().__init__(name)
        self.settings = settings
        self._pool: JudgePool | None = None
        self.judge_id = ""

    def load(self) -> bool:
        judge: Judge = judge_from_settings(self.settings)  # fails fast here on a bad judge spec
        self.judge_id = self.settings.judge_id or judge_id_of(judge)
        self._pool = JudgePool(
            functools.partial(judge_from_settings, self.settings),
            self.settings.concurrency,
            name="kserve-judge",
        )
        self.ready = True
        log.info("judge model ready", extra={"judge": self.judge_id, "model": self.name})
        return self.ready

    def stop(self) -> None:
        """KServe's teardown: the judge worker processes go with the model."""
        self.ready = False
        if self._pool is not None:
            self._pool.close()
            self._pool = None

    async def predict(
        self,
        payload: dict[str, Any] | InferRequest,
        headers: dict[str, str] | None = None,
        response_headers: dict[str, str] | None = None,
    ) -> dict[str, Any] | InferResponse:
        if isinstance(payload, InferRequest):
            judgments = await self._judge_rows(v2_inputs(payload))
            return v2_response(payload, self.name, judgments)
        judgments = await self._judge_rows(v1_inputs(payload))
        return {"predictions": [judgment_json(j) for j in judgments]}

    async def _judge_rows(self, inputs: list[JudgeInput]) -> list[Judgment]:
        if self._pool is None:
            raise InferenceError("the judge is not loaded")
        s = self.settings
        attempted = await asyncio.to_thread(
            judge_all,
            self._pool,
            inputs,
            timeout_s=s.timeout_s,
            max_retries=s.max_retries,
            backoff_s=s.backoff_s,
            on_call=lambda seconds, error: record_call(self.judge_id, seconds, error),
        )
        judgments = []
        for outcome in attempted:
            if outcome.judgment is None:
                error = outcome.error
                assert error is not None
                raise InferenceError(f"judge_failed: {error_name(error)}: {error}")
            judgments.append(outcome.judgment)
        for judgment in judgments:
            JUDGMENTS.labels(self.judge_id, polarity_label(judgment.positive)).inc()
        return judgments


def v1_inputs(payload: Any) -> list[JudgeInput]:
    if isinstance(payload, bytes | str):  # KServe passes non-JSON content types through undecoded
        raise InvalidInput("the body must be a JSON object sent with 'Content-Type: application/json'")
    try:
        request = V1Request.model_validate(payload)
    except ValidationError as e:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'body'}: {err['msg']}"
            for err in e.errors(include_input=False, include_url=False)
        )
        raise InvalidInput(f"invalid judge request: {problems}") from e
    return [JudgeInput(i.instruction, i.response, i.reference) for i in request.instances]


def v2_inputs(request: InferRequest) -> list[JudgeInput]:
    columns = {
        name: _strings(request, name, required=name != "reference")
        for name in ("instruction", "response", "reference")
    }
    n = len(columns["instruction"])
    if not 1 <= n <= MAX_ROWS or len(columns["response"]) != n:
        raise InvalidInput(f"'instruction' and 'response' need the same number of rows, 1 to {MAX_ROWS}")
    references: list[dict[str, Any] | None] = [None] * n
    if columns["reference"]:
        if len(columns["reference"]) != n:
            raise InvalidInput("'reference' needs one JSON object per row")
        references = [_reference(text) for text in columns["reference"]]
    return [
        JudgeInput(i, r, ref)
        for i, r, ref in zip(columns["instruction"], columns["response"], references, strict=True)
    ]


def _strings(request: InferRequest, name: str, *, required: bool) -> list[str]:
    tensor = request.get_input_by_name(name)
    if tensor is None:
        if required:
            raise InvalidInput(f"input {name!r} is missing (BYTES, one string per row)")
        return []
    if tensor.datatype != "BYTES":
        raise InvalidInput(f"input {name!r} must be BYTES, got {tensor.datatype}")
    values = []
    for value in tensor.data or []:
        if isinstance(value, bytes):
            try:
                value = value.decode("utf-8")
            except UnicodeDecodeError as e:
                raise InvalidInput(f"input {name!r} is not UTF-8") from e
        if not isinstance(value, str):
            raise InvalidInput(f"input {name!r} must hold strings, got {type(value).__name__}")
        values.append(value)
    return values


def _reference(text: str) -> dict[str, Any] | None:
    if not text:
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise InvalidInput(f"input 'reference' is not JSON: {e}") from e
    if not isinstance(value, dict):
        raise InvalidInput("input 'reference' must hold JSON objects")
    return value


def judgment_json(judgment: Judgment) -> dict[str, Any]:
    return {
        "text": judgment.text,
        "positive": judgment.positive,
        "error_spans": [list(span) for span in judgment.error_spans],
        "judge_id": judgment.judge_id,
    }


def v2_response(request: InferRequest, model_name: str, judgments: list[Judgment]) -> InferResponse:
    n = [len(judgments)]
    outputs = [
        InferOutput("text", n, "BYTES", [j.text for j in judgments]),
        InferOutput("positive", n, "BOOL", [j.positive for j in judgments]),
        InferOutput(
            "error_spans", n, "BYTES", [json.dumps([list(s) for s in j.error_spans]) for j in judgments]
        ),
        InferOutput("judge_id", n, "BYTES", [j.judge_id for j in judgments]),
    ]
    return InferResponse(request.id or "", model_name, outputs)


def build_parser() -> argparse.ArgumentParser:
    from kserve import model_server  # imported here: it parses sys.argv at import time

    parser = argparse.ArgumentParser(
        parents=[model_server.parser],
        description="Serve a cutalign judge (any plug-in) for synchronous judging over KServe v1/v2.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    defaults = JudgeSettings()
    parser.add_argument(
        "--judge", default=defaults.judge, help=JudgeSettings.model_fields["judge"].description
    )
    parser.add_argument(
        "--options_json",
        default=defaults.options_json,
        help=JudgeSettings.model_fields["options_json"].description,
    )
    parser.set_defaults(model_name="judge", enable_grpc=False)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    settings = JudgeSettings(judge=args.judge, options_json=args.options_json)
    model = JudgeModel(args.model_name, settings)
    model.load()
    kserve.ModelServer(
        http_port=args.http_port, grpc_port=args.grpc_port, workers=1, enable_grpc=args.enable_grpc
    ).start([model])


if __name__ == "__main__":
    main()

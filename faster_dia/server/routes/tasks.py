"""The task API in Runware's shape: ``POST /v1/tasks`` with a JSON array of tasks (``audioInference``,
``getResponse``), answered ``{"data": [...]}`` and/or ``{"errors": [...]}``, matched by ``taskUUID``.

A task runs in the background whether the client waits for it (``deliveryMethod: "sync"``) or not
(``"async"``: polled with ``getResponse``, or delivered to ``webhookURL``); its state lives in the job store, so
polling works across restarts. Its ``numberResults`` results are submitted to the model together, decoded as one
batch, and each is encoded, stored, uploaded and webhooked as soon as it is ready. docs/server.md has the fields.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import math
import secrets
import time
import uuid
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from ...errors import FasterDiaError
from ...speech import in_output_pool
from ..app import ServerState, state_of
from ..audio_settings import OutputSpec, encode_output, output_spec
from ..errors import INTERNAL_MESSAGE, request_id_of
from ..hosted import Hosted, voice_options
from ..jobstore import ERROR, SUCCESS, TaskRecord
from ..outbound import OutboundError
from ..schemas import MAX_INPUT_CHARS

log = logging.getLogger("faster_dia.server")

router = APIRouter()

#: Tasks in one call.
MAX_TASKS = 32
MAX_SEED = 2**31 - 1
CFG_SCALE_RANGE = (1.0, 30.0)
NEGATIVE_PROMPT_CHARS = (2, 3000)
MAX_RESULTS = 4
#: Seconds a result file is served by default, and the bounds of ``ttl``.
DEFAULT_TTL = 24 * 3600
TTL_RANGE = (60, 30 * 24 * 3600)
MAX_URL_CHARS = 2048
OUTPUT_TYPES = {"url": "URL", "base64data": "base64Data", "datauri": "dataURI"}

#: Runware-style model ids (AIR) and the names on this server they stand for (besides the server's own ids and
#: aliases, which tasks take as they are).
AIR_MODELS = {
    "runware:dia@1": "dia",
    "runware:dia@1.6b-0626": "dia-0626",
    "runware:dia2@1": "dia2",
    "runware:dia2@1b": "dia2-1b",
    "runware:dia2@2b": "dia2-2b",
}

#: Why Dia2 refuses negativePrompt: there is no text input on its unconditional branch to put it in.
DIA2_NEGATIVE_PROMPT = (
    "negativePrompt does not apply to Dia2 models: their unconditional guidance branch reads no text, only a "
    "fixed 'no word' token at every step (as they were trained), and the words' timing comes from the conditional "
    "branch, so a negative text has no place to enter. Leave it out, or set CFGScale to 1 (no guidance).")

#: Error ``type`` → HTTP status (the answer's status when no task succeeded).
_STATUS = {"invalidRequest": 400, "authentication": 401, "notFound": 404, "conflict": 409, "tooLarge": 413,
           "overloaded": 503, "serverError": 500}
_TYPES = {400: "invalidRequest", 401: "authentication", 404: "notFound", 409: "conflict", 413: "tooLarge",
          503: "overloaded"}
#: Model option → the task field it came from, for errors the model raises.
_FIELDS = {
    "input": "positivePrompt", "seed": "seed", "cfg_scale": "CFGScale", "temperature": "settings.temperature",
    "text_temperature": "settings.temperature", "audio_temperature": "settings.audioTemperature",
    "top_k": "settings.topK", "text_top_k": "settings.topK", "audio_top_k": "settings.topK",
    "max_new_tokens": "settings.maxNewTokens", "negative_prompt": "negativePrompt", "include_prefix":
    "settings.includePrefix",
}


class TaskError(Exception):
    """A task that cannot be done, in the task API's error shape."""

    def __init__(self, code: str, message: str, parameter: str | None = None, *, type_: str = "invalidRequest"):
        super().__init__(message)
        self.code, self.message, self.parameter, self.type = code, message, parameter, type_

    def body(self, task_uuid: Any) -> dict[str, Any]:
        return {"code": self.code, "message": self.message, "parameter": self.parameter, "type": self.type,
                "taskUUID": task_uuid if isinstance(task_uuid, str) else None}

    @classmethod
    def of(cls, exc: FasterDiaError, request_id: str) -> TaskError:
        """The task error for a library error (its status decides the type; a server fault says nothing more)."""
        if exc.http_status >= 500 and exc.http_status != 503:
            log.error("request %s: a task failed: %s: %s", request_id, type(exc).__name__, exc.message)
            return cls("serverError", INTERNAL_MESSAGE.format(request_id=request_id), type_="serverError")
        param = exc.param or ""
        if param.startswith(("voice", "audio_prompt", "prefix_")):
            parameter = "inputs.audios"
        else:
            parameter = _FIELDS.get(param, param or None)
        code = exc.code or {400: "invalidParameter", 404: "notFound", 409: "conflict", 413: "tooLarge",
                            503: "overloaded"}.get(exc.http_status, "failed")
        return cls(_camel(code), exc.message, parameter, type_=_TYPES.get(exc.http_status, "invalidRequest"))


def _camel(code: str) -> str:
    head, *rest = code.split("_")
    return head + "".join(part.capitalize() for part in rest)


# ---------------------------------------------------------------------- fields


def _get(element: dict[str, Any], path: str) -> Any:
    value: Any = element
    for part in path.split("."):
        if value is None:
            return None
        if not isinstance(value, dict):
            raise TaskError("invalidParameter", f"{path.rsplit('.', 1)[0]} must be an object.", path)
        value = value.get(part)
    return value


def _integer(element: dict, path: str, low: int, high: int) -> int | None:
    value = _get(element, path)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise TaskError("invalidParameter", f"{path} must be an integer from {low} to {high}, got {value!r}.", path)
    return value


def _number(element: dict, path: str, low: float, high: float, *, step: float | None = None) -> float | None:
    value = _get(element, path)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        raise TaskError("invalidParameter", f"{path} must be a number from {low:g} to {high:g}, got {value!r}.", path)
    if step is not None and abs(value / step - round(value / step)) > 1e-6:
        raise TaskError("invalidParameter", f"{path} goes in steps of {step:g}, got {value!r}.", path)
    return float(value)


def _boolean(element: dict, path: str) -> bool | None:
    value = _get(element, path)
    if value is not None and not isinstance(value, bool):
        raise TaskError("invalidParameter", f"{path} must be true or false, got {value!r}.", path)
    return value


def _text(element: dict, path: str, low: int, high: int) -> str | None:
    value = _get(element, path)
    if value is None:
        return None
    if not isinstance(value, str) or not low <= len(value) <= high:
        raise TaskError("invalidParameter", f"{path} must be text of {low} to {high} characters.", path)
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise TaskError("invalidParameter", f"{path} contains an unpaired UTF-16 surrogate.", path) from None
    return value


def _choice(element: dict, path: str, choices: dict[str, str], default: str) -> str:
    value = _get(element, path)
    if value is None:
        return default
    if not isinstance(value, str) or value.lower() not in choices:
        raise TaskError("invalidParameter", f"{path} must be one of {', '.join(choices.values())}, got {value!r}.",
                        path)
    return choices[value.lower()]


def _url(element: dict, path: str) -> str | None:
    value = _text(element, path, 1, MAX_URL_CHARS)
    if value is not None and not value.lower().startswith(("http://", "https://")):
        raise TaskError("invalidParameter", f"{path} must be an http or https URL.", path)
    return value


def task_uuid_of(element: dict[str, Any]) -> str:
    value = element.get("taskUUID")
    if value is None:
        raise TaskError("missingTaskUUID", "taskUUID is required: a UUID v4 the client makes for each task.",
                        "taskUUID")
    parsed = None
    if isinstance(value, str):
        try:
            parsed = uuid.UUID(value)
        except ValueError:
            parsed = None
    if parsed is None or parsed.version != 4 or parsed.variant != uuid.RFC_4122 or str(parsed) != value.lower():
        raise TaskError("invalidTaskUUID", f"taskUUID must be a UUID v4 (like {uuid.uuid4()}), got {value!r}.",
                        "taskUUID")
    return str(parsed)


@dataclass
class AudioTask:
    """An ``audioInference`` task, its fields checked."""

    task_uuid: str
    model: str | None
    script: str
    negative_prompt: str | None
    seed: int
    cfg_scale: float | None
    temperature: float | None
    audio_temperature: float | None
    top_k: int | None
    include_prefix: bool | None
    max_new_tokens: int | None
    audios: list[Any]
    output_type: str
    output_format: Any
    audio_settings: Any
    number_results: int
    include_cost: bool
    asynchronous: bool
    ttl: int
    webhook_url: str | None
    upload_endpoint: str | None

    @classmethod
    def parse(cls, element: dict[str, Any], task_uuid: str) -> AudioTask:
        model = _get(element, "model")
        if model is not None and not isinstance(model, str):
            raise TaskError("invalidModel", "model must be a model id.", "model")
        script = _text(element, "positivePrompt", 1, MAX_INPUT_CHARS)
        if script is None:
            script = _text(element, "speech.text", 1, MAX_INPUT_CHARS)
        if script is None or not script.strip():
            raise TaskError("missingPositivePrompt", "positivePrompt (or speech.text) is required: the script to speak.",
                            "positivePrompt")
        audios = _get(element, "inputs.audios")
        if audios is not None and (not isinstance(audios, list) or not 1 <= len(audios) <= 2):
            raise TaskError("invalidParameter", "inputs.audios must be a list of 1 or 2 voice references "
                            "(speaker 1, then speaker 2).", "inputs.audios")
        output_type = _choice(element, "outputType", OUTPUT_TYPES, "URL")
        ttl = _integer(element, "ttl", *TTL_RANGE)
        if ttl is not None and output_type != "URL":
            raise TaskError("invalidParameter", "ttl applies to outputType URL only (how long the file is served).",
                            "ttl")
        delivery = _choice(element, "deliveryMethod", {"sync": "sync", "async": "async"}, "sync")
        seed = _integer(element, "seed", 0, MAX_SEED)
        return cls(
            task_uuid=task_uuid,
            model=model,
            script=script,
            negative_prompt=_text(element, "negativePrompt", *NEGATIVE_PROMPT_CHARS),
            seed=secrets.randbits(32) if seed is None else seed,
            cfg_scale=_number(element, "CFGScale", *CFG_SCALE_RANGE, step=0.01),
            temperature=_number(element, "settings.temperature", 0.0, 5.0),
            audio_temperature=_number(element, "settings.audioTemperature", 0.0, 5.0),
            top_k=_integer(element, "settings.topK", 1, 500),
            include_prefix=_boolean(element, "settings.includePrefix"),
            max_new_tokens=_integer(element, "settings.maxNewTokens", 1, 1 << 20),
            audios=audios or [],
            output_type=output_type,
            output_format=_get(element, "outputFormat") or "MP3",
            audio_settings=_get(element, "audioSettings"),
            number_results=_integer(element, "numberResults", 1, MAX_RESULTS) or 1,
            include_cost=bool(_boolean(element, "includeCost")),
            asynchronous=delivery == "async",
            ttl=DEFAULT_TTL if ttl is None else ttl,
            webhook_url=_url(element, "webhookURL"),
            upload_endpoint=_url(element, "uploadEndpoint"),
        )

    def options(self, tts: Any) -> dict[str, Any]:
        """The model's options for this task (voices apart). The names map onto each family's sampling."""
        defaults = tts.option_defaults()
        options: dict[str, Any] = {"seed": self.seed}
        if self.cfg_scale is not None:
            options["cfg_scale"] = self.cfg_scale
        if self.max_new_tokens is not None:
            options["max_new_tokens"] = self.max_new_tokens
        # guided = uncond + scale * (cond - uncond): at scale 1 the unconditional branch has no effect.
        guided = (self.cfg_scale if self.cfg_scale is not None else defaults.get("cfg_scale", 1.0)) > 1.0
        if tts.family == "dia2":
            for name, value in (("text_temperature", self.temperature), ("audio_temperature", self.audio_temperature),
                                ("top_k", self.top_k), ("include_prefix", self.include_prefix)):
                if value is not None:
                    options[name] = value
            if self.negative_prompt is not None and guided:
                raise TaskError("unsupportedParameter", DIA2_NEGATIVE_PROMPT, "negativePrompt")
        else:
            # Dia-1.6B samples audio tokens only: audioTemperature is its temperature; temperature stands in for it.
            temperature = self.audio_temperature if self.audio_temperature is not None else self.temperature
            if temperature is not None:
                options["temperature"] = temperature
            if self.top_k is not None:
                options["top_k"] = self.top_k
            if self.negative_prompt is not None and guided:
                options["negative_prompt"] = self.negative_prompt
        return options


# ---------------------------------------------------------------------- the route


@dataclass
class _Call:
    state: ServerState
    hosted: Hosted
    base_url: str
    request_id: str


@router.post("/v1/tasks", responses={200: {"description": "{data: [...]} and/or {errors: [...]}"}},
             openapi_extra={"requestBody": {"required": True, "content": {"application/json": {"schema": {
                 "type": "array", "items": {"type": "object", "required": ["taskType"]}}}}}})
async def run_tasks(request: Request) -> JSONResponse:
    """Run an array of tasks: ``audioInference`` (speech from a script) and ``getResponse`` (the results of an
    earlier task so far). Answers are matched to tasks by ``taskUUID``."""
    state = state_of(request)
    call = _Call(state, state.hosted, str(request.base_url), request_id_of(request))
    try:
        elements = json.loads(await request.body())
    except (ValueError, UnicodeDecodeError):
        return _answer([], [TaskError("invalidJSON", "The body is not valid JSON.").body(None)])
    if not isinstance(elements, list) or not elements:
        return _answer([], [TaskError("invalidRequest", "The body must be a JSON array of tasks.").body(None)])
    if isinstance(elements[0], dict) and elements[0].get("taskType") == "authentication":
        elements = elements[1:]  # checked by the authentication middleware
    if len(elements) > MAX_TASKS:
        return _answer([], [TaskError("tooManyTasks", f"At most {MAX_TASKS} tasks per call.").body(None)])
    outcomes = await asyncio.gather(*(_one(call, element) for element in elements))
    data = [entry for found, _ in outcomes for entry in found]
    errors = [entry for _, failed in outcomes for entry in failed]
    return _answer(data, errors)


def _answer(data: list[dict], errors: list[dict]) -> JSONResponse:
    body: dict[str, Any] = {}
    if data or not errors:
        body["data"] = data
    if errors:
        body["errors"] = errors
    status = 200 if data or not errors else _STATUS.get(errors[0].get("type"), 400)
    return JSONResponse(body, status_code=status)


async def _one(call: _Call, element: Any) -> tuple[list[dict], list[dict]]:
    task_uuid = element.get("taskUUID") if isinstance(element, dict) else None
    try:
        if not isinstance(element, dict):
            raise TaskError("invalidTask", "Each task must be a JSON object.")
        kind = element.get("taskType")
        if kind == "audioInference":
            return await _audio_inference(call, element)
        if kind == "getResponse":
            return await _get_response(call, element)
        if kind == "authentication":
            raise TaskError("invalidTask", "The authentication task must come first in the array.", "taskType")
        raise TaskError("unsupportedTaskType", f"taskType must be audioInference or getResponse, got {kind!r}.",
                        "taskType")
    except TaskError as exc:
        return [], [exc.body(task_uuid)]
    except FasterDiaError as exc:
        return [], [TaskError.of(exc, call.request_id).body(task_uuid)]


async def _get_response(call: _Call, element: dict) -> tuple[list[dict], list[dict]]:
    task_uuid = task_uuid_of(element)
    record = await call.hosted.db(call.hosted.store.get_task, task_uuid)
    if record is None:
        raise TaskError("taskNotFound", f"There is no task {task_uuid} (never sent, or forgotten after "
                        f"{call.hosted.task_retention // 3600} hours).", "taskUUID", type_="notFound")
    return _results(record, polling=True)


def _results(record: TaskRecord, *, polling: bool) -> tuple[list[dict], list[dict]]:
    """A task's results so far: successes in ``data``, failures in ``errors``; polling also lists a status entry
    for each result still processing or failed."""
    data, errors = [], []
    for result in record.results:
        if result.status == SUCCESS:
            data.append(result.body)
            continue
        if result.status == ERROR:
            errors.append(result.body)
        if polling:
            data.append({"taskType": record.task_type, "taskUUID": record.task_uuid, "status": result.status})
    return data, errors


async def _audio_inference(call: _Call, element: dict) -> tuple[list[dict], list[dict]]:
    task_uuid = task_uuid_of(element)
    task = AudioTask.parse(element, task_uuid)
    name = task.model if task.model is None else AIR_MODELS.get(task.model.lower(), task.model)
    try:
        hosted_model = call.state.models.resolve(name)
    except FasterDiaError as exc:
        raise TaskError("invalidModel", exc.message, "model", type_="notFound") from exc
    tts = await hosted_model.get()
    options = task.options(tts)
    output = output_spec(task.output_format, task.audio_settings, tts.sample_rate)
    type(tts).check_options(options)
    for field in ("webhookURL", "uploadEndpoint"):
        url = task.webhook_url if field == "webhookURL" else task.upload_endpoint
        if url is not None:
            await call.hosted.outbound.check(url, param=field)
    references: list[Any] = []
    try:
        for i, value in enumerate(task.audios):
            references.append(await call.hosted.audio_reference(value, f"inputs.audios[{i}]", call.state.voices))
        options.update(voice_options(tts, references))
        created = await call.hosted.db(
            call.hosted.store.create_task, task_uuid, task_type="audioInference", model=hosted_model.id,
            number_results=task.number_results, webhook_url=task.webhook_url, retain_seconds=call.hosted.task_retention)
    except BaseException:
        call.hosted.discard(references)
        raise
    if not created:
        call.hosted.discard(references)
        raise TaskError("duplicateTaskUUID", f"taskUUID {task_uuid} was used already; every task needs a new one.",
                        "taskUUID", type_="conflict")
    hosted_model.acquire()
    job = call.hosted.spawn(_run(call, task, hosted_model, tts, options, output, references))
    if task.asynchronous:
        return [{"taskType": "audioInference", "taskUUID": task_uuid}], []
    await asyncio.shield(job)
    record = await call.hosted.db(call.hosted.store.get_task, task_uuid)
    return _results(record, polling=False)


async def _run(call: _Call, task: AudioTask, hosted_model: Any, tts: Any, options: dict[str, Any],
               output: OutputSpec, references: list[Any]) -> None:
    """Generate a task's results and deliver each as it is ready; a failure fails the results not yet made."""
    started = time.perf_counter()
    done: set[int] = set()
    failure: TaskError | None = None
    try:
        async for index, speech in tts.agenerate_each(task.script, task.number_results, **options):
            try:
                body, status = await _deliver(call, task, tts, index, speech, output), SUCCESS
            except TaskError as exc:
                body, status = exc.body(task.task_uuid), ERROR
            await _finish(call, task, index, status, body)
            done.add(index)
    except FasterDiaError as exc:
        failure = TaskError.of(exc, call.request_id)
    except Exception:
        log.exception("request %s: task %s failed", call.request_id, task.task_uuid)
        failure = TaskError("serverError", INTERNAL_MESSAGE.format(request_id=call.request_id), type_="serverError")
    finally:
        hosted_model.release()
        call.hosted.discard(references)
    for index in range(task.number_results):
        if index not in done and failure is not None:
            await _finish(call, task, index, ERROR, failure.body(task.task_uuid))
    log.info("task %s %s model=%s results=%d/%d total=%.3fs", task.task_uuid, "ok" if failure is None else
             f"error {failure.code}", hosted_model.id, len(done), task.number_results, time.perf_counter() - started)


async def _deliver(call: _Call, task: AudioTask, tts: Any, index: int, speech: Any, output: OutputSpec) -> dict:
    """One result: encoded, uploaded if asked, stored or inlined; the result object."""
    data = await in_output_pool(encode_output, speech.audio, speech.sample_rate, output)
    if task.upload_endpoint is not None:
        try:
            await call.hosted.upload(task.upload_endpoint, data, output.content_type, task.task_uuid)
        except OutboundError as exc:
            raise TaskError("uploadFailed", exc.message, "uploadEndpoint", type_="serverError") from exc
    result: dict[str, Any] = {"taskType": "audioInference", "taskUUID": task.task_uuid, "status": SUCCESS,
                              "audioUUID": str(uuid.uuid4()), "seed": speech.seed, "outputFormat": output.name,
                              "duration": round(speech.duration, 3)}
    if task.output_type == "URL":
        file_id = await call.hosted.db(call.hosted.save_file, data, task_uuid=task.task_uuid,
                                       extension=output.extension, content_type=output.content_type, ttl=task.ttl)
        result["audioURL"] = f"{call.base_url}v1/files/{file_id}"
    elif task.output_type == "base64Data":
        result["audioBase64Data"] = base64.b64encode(data).decode()
    else:
        result["audioDataURI"] = f"data:{output.content_type};base64,{base64.b64encode(data).decode()}"
    if task.include_cost:
        rate = tts.engine.stats().steps_per_second
        result["cost"] = call.hosted.pricing.cost(audio_seconds=speech.duration, frames=len(speech.codes),
                                                  steps_per_second=rate if math.isfinite(rate) else 0.0)
    return result


async def _finish(call: _Call, task: AudioTask, index: int, status: str, body: dict) -> None:
    """Record a result; its webhook delivery is queued with it."""
    webhook = None
    if task.webhook_url is not None:
        webhook = {"data": [body]} if status == SUCCESS else {"errors": [body]}
    await call.hosted.db(call.hosted.store.finish_result, task.task_uuid, index, status=status, body=body,
                         webhook_body=webhook)
    call.hosted.wake_deliveries()


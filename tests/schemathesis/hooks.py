"""Schemathesis hooks for visbin (loaded by run.sh through SCHEMATHESIS_HOOKS).

They keep a run from touching data it did not make, and teach Schemathesis
the two media types it does not know:

- A DELETE /v1/schedules/{id} or POST /v1/schedules/{id}/blocks may reach
  only a schedule this run created (a 201 it received); any other id is
  pointed at one no schedule has (the server answers 404). So a run never
  deletes or appends to a schedule that another test or a user uploaded,
  whatever ids it draws.
- Every upload's `name` gets the suffix VISBIN_ST_NAME_SUFFIX (unique per
  run), so an upload never has the content of a schedule that existed before
  the run, and a duplicate answer (200) only ever names one of the run's own.
- The ids of the schedules the run created go to VISBIN_ST_CREATED_FILE;
  run.sh deletes those still there when the run ends.
- JSON upload and append bodies are tidied where JSON Schema cannot say
  what the server needs: a period's ends are put in order and repeated
  block identities made unique (the body stays valid against the schema it
  was drawn from, and negative cases stay negative). Without this almost
  every drawn body is refused (`stop is before start`, `duplicate identity`)
  and the bins of real schedules, appends and duplicates go untested.
- NDJSON bodies (described as strings) are sent as they are; CSV answers
  are handed to schema validation as text.
"""

import json
import os
import re
import threading

import schemathesis

NAME_SUFFIX = os.environ.get("VISBIN_ST_NAME_SUFFIX", "")
CREATED_FILE = os.environ.get("VISBIN_ST_CREATED_FILE", "")

# Ids no schedule has: visbin hands out ids from 1 upwards.
ABSENT_ID_BASE = 9_000_000_000_000_000

# Schedules this run created (workers are threads of one process).
CREATED = set()
CREATED_LOCK = threading.Lock()

GUARDED = {
    ("DELETE", "/v1/schedules/{id}"),
    ("POST", "/v1/schedules/{id}/blocks"),
}

# What the server's integer path extractor reads as a number (Rust's
# `i64::from_str` takes an optional sign and leading zeros).
NUMBER = re.compile(r"[+-]?[0-9]+")

NDJSON_TYPES = ("application/x-ndjson", "application/ndjson", "application/jsonl")


def _guard_id(case):
    value = case.path_parameters.get("id")
    if isinstance(value, bool):
        return
    text = str(value)
    if not NUMBER.fullmatch(text):
        return
    number = int(text)
    if number < 1 or number >= ABSENT_ID_BASE:
        return
    with CREATED_LOCK:
        ours = number in CREATED
    if not ours:
        case.path_parameters["id"] = ABSENT_ID_BASE + number


def _renamed_ndjson(body):
    """The NDJSON upload with the suffix added to its header line's name."""
    lines = body.split("\n")
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            header = json.loads(line)
        except ValueError:
            return body
        if isinstance(header, dict) and isinstance(header.get("name"), str):
            header["name"] += NAME_SUFFIX
            lines[i] = json.dumps(header)
        return "\n".join(lines)
    return body


def _rename_upload(case):
    body = case.body
    if isinstance(body, dict) and isinstance(body.get("name"), str):
        case.body = {**body, "name": body["name"] + NAME_SUFFIX}
    elif isinstance(body, str) and (case.media_type or "").split(";")[0].strip() in NDJSON_TYPES:
        case.body = _renamed_ndjson(body)


def _is_number(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _order_periods(value):
    """Swaps the ends of every period (anywhere in `value`) given backwards."""
    if isinstance(value, list):
        for v in value:
            _order_periods(v)
    elif isinstance(value, dict):
        for a, b in (("start", "stop"), ("start_mjd", "end_mjd")):
            if _is_number(value.get(a)) and _is_number(value.get(b)) and value[a] > value[b]:
                value[a], value[b] = value[b], value[a]
        for v in value.values():
            _order_periods(v)


def _identity(block):
    """The block's identity as the server reads it, if it has one."""
    for key in ("original_block_id", "id"):
        v = block.get(key)
        if v is None:
            continue
        if isinstance(v, str):
            return v
        if isinstance(v, int) and not isinstance(v, bool):
            return str(v)
        return None
    return None


def _unique_identities(blocks):
    seen = set()
    for i, block in enumerate(blocks):
        if not isinstance(block, dict):
            continue
        identity = _identity(block)
        if identity is None:
            continue
        if identity in seen:
            identity = f"{identity}~{i}"
            block["original_block_id"] = identity
        seen.add(identity)
    return seen


def _tidy(body):
    blocks = body if isinstance(body, list) else body.get("blocks") if isinstance(body, dict) else None
    if not isinstance(blocks, list):
        return
    _order_periods(body)
    identities = _unique_identities(blocks)
    possible = body.get("possible_periods") if isinstance(body, dict) else None
    if isinstance(possible, dict):
        for key in [k for k in possible if k not in identities]:
            del possible[key]


@schemathesis.hook
def before_call(context, case, kwargs):
    key = (case.method.upper(), case.operation.path)
    if key in GUARDED:
        _guard_id(case)
    if case.method.upper() == "POST" and isinstance(case.body, (dict, list)):
        _tidy(case.body)
    if key == ("POST", "/v1/schedules") and NAME_SUFFIX:
        _rename_upload(case)


@schemathesis.hook
def after_call(context, case, response):
    if case.method.upper() != "POST" or case.operation.path != "/v1/schedules":
        return
    if response.status_code != 201:
        return
    try:
        schedule_id = json.loads(response.content)["schedule_id"]
    except (ValueError, KeyError, TypeError):
        return
    if not isinstance(schedule_id, int):
        return
    with CREATED_LOCK:
        CREATED.add(schedule_id)
        if CREATED_FILE:
            with open(CREATED_FILE, "a", encoding="utf-8") as f:
                f.write(f"{schedule_id}\n")


# NDJSON bodies are described as strings (their lines in `contentSchema`):
# a string is sent as it is; anything else that negative testing makes up is
# sent as JSON lines, which the server must refuse like any malformed body.
@schemathesis.serializer(*NDJSON_TYPES)
def ndjson(ctx, value):
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode("utf-8", "surrogatepass")
    if isinstance(value, list):
        return "".join(json.dumps(v) + "\n" for v in value).encode("utf-8")
    return (json.dumps(value) + "\n").encode("utf-8")


# `format=csv` answers are validated as text against the schema's pattern.
@schemathesis.deserializer("text/csv")
def csv_text(ctx, response):
    return response.content.decode("utf-8")

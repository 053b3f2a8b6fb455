"""Checks the README's API examples against the OpenAPI document (docs/openapi.json).

In the README's API sections (a heading naming `/api/v1` or API keys, down to the next heading of the same or
a higher level), every ```json block must follow a marker naming what it is an example of:

    <!-- openapi: request POST /api/v1/tasks -->
    <!-- openapi: response GET /api/v1/tasks/{id} 200 -->

and must be valid against that schema. A block without a marker, a marker naming an operation or
status the document does not have, or an example the schema refuses fails the check (exit 1), so
the README cannot drift from the API. Run by scripts/api-fuzz.sh with the virtual environment's
Python (it needs `jsonschema`, which openapi-spec-validator brings).
"""

import json
import re
import sys

import jsonschema

MARKER = re.compile(r"<!-- openapi: (request|response) (GET|POST|PUT|DELETE|PATCH) (\S+)(?: (\d{3}))? -->")
HEADING = re.compile(r"^(#+) (.*)")


def api_blocks(lines):
    """Yields (line number, marker line or None, block text) for each json block in API sections."""
    section_level = None
    previous = None
    index = 0
    while index < len(lines):
        line = lines[index]
        heading = HEADING.match(line)
        if heading:
            level = len(heading.group(1))
            if section_level is not None and level <= section_level:
                section_level = None
            if section_level is None and ("/api/v1" in heading.group(2) or "API key" in heading.group(2)):
                section_level = level
        if section_level is not None and line.strip() == "```json":
            start = index + 1
            end = start
            while lines[end].strip() != "```":
                end += 1
            yield start, previous, "\n".join(lines[start:end])
            index = end
        if line.strip():
            previous = line.strip()
        index += 1


def schema_for(document, kind, method, path, status):
    operation = document["paths"].get(path, {}).get(method.lower())
    if operation is None:
        raise LookupError(f"the document has no operation {method} {path}")
    if kind == "request":
        body = operation.get("requestBody", {}).get("content", {}).get("application/json")
        if body is None:
            raise LookupError(f"{method} {path} takes no JSON body")
        return body["schema"]
    answer = operation["responses"].get(status)
    if answer is None:
        raise LookupError(f"{method} {path} does not document the status {status}")
    content = answer.get("content", {}).get("application/json")
    if content is None:
        raise LookupError(f"{method} {path} {status} has no JSON body")
    return content["schema"]


def main():
    readme_path, document_path = sys.argv[1], sys.argv[2]
    with open(readme_path, encoding="utf-8") as readme:
        lines = readme.read().splitlines()
    with open(document_path, encoding="utf-8") as doc:
        document = json.load(doc)
    failures = []
    checked = 0
    for line_number, previous, text in api_blocks(lines):
        where = f"{readme_path}:{line_number}"
        marker = MARKER.fullmatch(previous or "")
        if marker is None:
            failures.append(f"{where}: a json block in an API section without an `<!-- openapi: ... -->` marker")
            continue
        kind, method, path, status = marker.groups()
        try:
            schema = schema_for(document, kind, method, path, status)
            example = json.loads(text)
        except (LookupError, ValueError) as err:
            failures.append(f"{where}: {err}")
            continue
        # Resolve `#/components/...` references against the whole document.
        rooted = dict(schema)
        rooted["components"] = document.get("components", {})
        validator = jsonschema.Draft202012Validator(rooted)
        errors = sorted(validator.iter_errors(example), key=lambda e: list(e.path))
        for error in errors:
            at = "/".join(str(part) for part in error.path) or "(the whole example)"
            failures.append(f"{where}: {kind} {method} {path} {status or ''}: at {at}: {error.message}")
        checked += 1
    for failure in failures:
        print(failure, file=sys.stderr)
    if failures:
        sys.exit(1)
    if checked == 0:
        print(f"{readme_path}: no API examples found", file=sys.stderr)
        sys.exit(1)
    print(f"README API examples: {checked} checked against {document_path}")


if __name__ == "__main__":
    main()
